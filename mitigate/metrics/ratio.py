"""The theory's ratio test, measured on trained models (numbers only; the policy scoring that feeds it
is `recipes.evaluate.ratio_reference` / `ratio_rows`).

On a task whose correct set C(x) is enumerable, every correct output y_i of a prompt has an exact
log-probability under the base, log p0(y_i|x), and under a trained model, log pi(y_i|x). Theory
(docs/design.md, section 1):

    RL (KL-leashed)  p*(y) ∝ p0(y) exp(r(y)/beta)         -> log-ratios among correct outputs unchanged
    SDSD             p_SD(y) ∝ p0(y) exp(pcmi_bar(y))      -> log-ratios shift by pcmi_bar differences,
    pcmi_bar(y) = E_{y* ~ p0(.|x, C)} [log p0(y|x, y*) - log p0(y|x)]   (pointwise CMI with a demonstration)

So for two correct outputs i, j of one prompt, with a_i = log pi(y_i) - log p0(y_i) (the change of
y_i's log-probability) and b_i = pcmi_bar(y_i),

    Delta_ij = a_i - a_j  (change of their log-ratio)     d_ij = b_i - b_j,

and the slope of Delta on d through the origin, pooled over all pairs of all prompts, is

    slope = sum_x sum_{i<j} Delta_ij d_ij / sum_x sum_{i<j} d_ij^2.

It is 0 for a ratio-preserving method (Delta = 0: any uniform rescaling of the correct set) and c for
a model tilted by exactly c * pcmi_bar (Delta = c d); SDSD's fixed point has slope 1.

The slope alone confounds the tilt with *sharpening*: likely demonstrations resemble likely outputs,
so pcmi_bar correlates with log p0 (within-prompt correlation 0.53 on the `paper` task), and a model
that only sharpens the base (Delta = s e, e_ij = log p0(y_i) - log p0(y_j), what a lower sampling
temperature does) gets a positive slope too. So the test also fits both regressors,

    Delta_ij = beta_pcmi d_ij + beta_sharp e_ij,

and reports `partial_slope` = beta_pcmi (the tilt along pcmi beyond sharpening: c for a model tilted
by c * pcmi_bar + s * log p0, whatever s) and `sharpening` = beta_sharp. Per prompt we keep the five
sums of the normal equations (`ratio_sxy` = sum Delta d, `ratio_sxx` = sum d^2, `ratio_sey` = sum
Delta e, `ratio_see` = sum e^2, `ratio_sxe` = sum d e over pairs i<j; sum_{i<j} (u_i - u_j)(v_i - v_j)
= P sum_i (u_i - ū)(v_i - v̄)), so each coefficient of any weighted set of prompts and seeds is a
function of their means, which the crossed bootstrap resamples like every other per-prompt column
(`summary.ratio_block`). Beside them, KL(pi(.|x, C) || p0(.|x, C)) (`kl_correct`): how far the
distribution *among correct outputs* moved, in any direction. Prompts with fewer than two correct
outputs carry NaN (left out).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

RATIO_KEYS = ("ratio_sxy", "ratio_sxx", "ratio_sey", "ratio_see", "ratio_sxe", "kl_correct")


def pcmi_bar(base_logp: np.ndarray, teacher_logp: np.ndarray) -> np.ndarray:
    """[P] E_{y* ~ p0(.|x, C)} pcmi(y_i; y*|x) for the P correct outputs of one prompt.

    base_logp [P]: log p0(y_i|x); teacher_logp [P (demonstration y*_k), P (output y_i)]:
    log p0(y_i|x, y*_k). Demonstrations are weighted by the base's distribution over the correct
    set, p0(y*_k|x) / sum_C p0, as the theory's tilt defines them."""
    base_logp = np.asarray(base_logp, dtype=float)
    w = np.exp(base_logp - logsumexp(base_logp))
    return w @ (np.asarray(teacher_logp, dtype=float) - base_logp[None, :])


def ratio_stats(base_logp: np.ndarray, model_logp: np.ndarray, pcmi: np.ndarray) -> dict[str, float]:
    """One prompt's sufficient statistics: {ratio_sxy, ratio_sxx, kl_correct} (see the module doc),
    NaN for a prompt with fewer than two correct outputs."""
    base_logp, model_logp, pcmi = (np.asarray(v, dtype=float) for v in (base_logp, model_logp, pcmi))
    P = len(base_logp)
    if P < 2:
        return {k: float("nan") for k in RATIO_KEYS}
    a = model_logp - base_logp - np.mean(model_logp - base_logp)
    d = pcmi - pcmi.mean()
    e = base_logp - base_logp.mean()
    log_pi = model_logp - logsumexp(model_logp)
    log_p0 = base_logp - logsumexp(base_logp)
    kl = float(np.sum(np.exp(log_pi) * (log_pi - log_p0)))
    return {"ratio_sxy": P * float(a @ d), "ratio_sxx": P * float(d @ d), "ratio_sey": P * float(a @ e),
            "ratio_see": P * float(e @ e), "ratio_sxe": P * float(d @ e), "kl_correct": max(kl, 0.0)}


def slope(sxy, sxx):
    """The pooled slope from (means or sums of) the per-prompt statistics; works on replicate arrays."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(sxy, dtype=float) / np.asarray(sxx, dtype=float)


def partial_slopes(sxy, sxx, sey, see, sxe):
    """(beta_pcmi, beta_sharp) of Delta on (d, e) from (means or sums of) the five sums; works on
    replicate arrays."""
    sxy, sxx, sey, see, sxe = (np.asarray(v, dtype=float) for v in (sxy, sxx, sey, see, sxe))
    with np.errstate(invalid="ignore", divide="ignore"):
        det = sxx * see - sxe ** 2
        return (see * sxy - sxe * sey) / det, (sxx * sey - sxe * sxy) / det
