"""Speed-ups leave training unchanged: two smoke training steps of grpo and of sdsd (from the
session's smoke base) end with the weights recorded in tests/fixtures/smoke_weights_reference.safetensors,
written by the revision before the training-loop speed-ups (e8ac642: it scored the old log-probs
in a separate no-grad forward; now they are the first pass's log-probs, detached), and regenerated
by issue 28's sampler change (another random stream, so other rollouts) and shared-context scoring.

Tolerance: 1e-6 absolute per weight, except the attention key biases, and 1e-5 on the next-token
probabilities the trained models give. The reference was bit-identical on its machine; two float32 effects move
weights since: the reductions of different CPU vector widths (AVX2 / AVX512) round differently,
and distinct-row scoring (`tiny_gpt.distinct_rows`, 2026-12-02) sums repeated rollouts' gradients
in another order. Both stay near 3e-8 on every weight but one kind: a key bias adds the same
q.b_k to every attention score of a query, which the softmax cancels, so its gradient is zero in
exact arithmetic and pure rounding noise in floats, and Adam (which divides by the gradient's own
scale) turns noise into steps of lr size (2.6e-6 here). Those biases change no output: the
trained models' next-token probabilities agree with the reference weights' to 1e-5 (measured
6.6e-7; log-probs near -20 differ by a few float32 ulps, 5.7e-6).

    python tests/e2e/test_same_weights.py --regenerate   # only for a change meant to move training
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "smoke_weights_reference.safetensors"
METHODS = ("grpo", "sdsd")


def trained_weights(base, work: Path) -> dict[str, torch.Tensor]:
    from mitigate import config as C
    from mitigate.recipes.train import train

    out = {}
    for m in METHODS:
        cfg = C.load(preset="smoke", overrides=["train.steps=2", f"train.objective={{name: {m}}}"])
        run = train(cfg, base, work / m, quiet=True, method=m)
        out.update({f"{m}/{k}": v for k, v in load_file(run / "checkpoint" / "model.safetensors").items()})
    return out


def without_key_bias(name: str, w: torch.Tensor) -> torch.Tensor:
    """The weight with the attention key bias (the middle third of GPT-2's fused q, k, v bias) cut out."""
    if not name.endswith("attn.c_attn.bias"):
        return w
    n = len(w) // 3
    return torch.cat([w[:n], w[2 * n:]])


def test_smoke_training_gives_the_reference_weights(smoke_base, tmp_path):
    from mitigate import config as C
    from mitigate.policies import load_policy
    from mitigate.tasks import make_task

    reference = load_file(REFERENCE)
    got = trained_weights(smoke_base, tmp_path)
    assert set(got) == set(reference)
    worst = max((without_key_bias(k, got[k]) - without_key_bias(k, reference[k])).abs().max().item()
                for k in reference)
    assert worst <= 1e-6, f"largest weight difference {worst:.3g}"
    # what the weights compute: log-probs of base samples under each trained model and its reference
    task = make_task(C.load(preset="smoke").task)
    policy = load_policy(smoke_base)[0]
    contexts = [q.tokens for q in task.prompts("id_test")[:16] for _ in range(4)]
    s = policy.sample(contexts, task.max_new_tokens, generator=torch.Generator().manual_seed(0))
    for m in METHODS:
        logprobs = {}
        for name, weights in (("got", got), ("reference", reference)):
            state = {k.split("/", 1)[1]: v for k, v in weights.items() if k.startswith(f"{m}/")}
            missing, unexpected = policy.model.load_state_dict(state, strict=False)
            assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the token embedding
            with torch.no_grad():
                logprobs[name] = policy.logprobs(contexts, s.tokens, s.mask)
        gap = ((logprobs["got"].exp() - logprobs["reference"].exp()) * s.mask[..., None]).abs().max().item()
        assert gap <= 1e-5, f"{m}: largest probability difference {gap:.3g}"
    # the check can fail: the weights did move away from the base in two steps
    from mitigate.policies import load_policy

    base_sd = load_policy(smoke_base)[0].model.state_dict()
    moved = max((got[f"grpo/{k}"] - base_sd[k]).abs().max().item() for k in base_sd if f"grpo/{k}" in got)
    assert moved > 1e-5


if __name__ == "__main__" and "--regenerate" in sys.argv:
    import tempfile

    from mitigate import config as C
    from mitigate.recipes.pretrain import pretrain

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        base = pretrain(C.load(preset="smoke"), Path(d) / "base", quiet=True)
        save_file({k: v.contiguous() for k, v in trained_weights(base, Path(d)).items()}, str(REFERENCE))
    print(f"wrote {REFERENCE}")
