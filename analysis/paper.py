"""`python -m analysis paper RUN_FOLDER... --out paper`: every table, figure and the methods
section of a paper from run folders, for the hand-kept `paper/main.tex` to include.

    OUT/tables/<run>-<table>.tex, .md   analysis.tables (booktabs; the same tables as Markdown)
    OUT/figures/<run>-<figure>.pdf, .png  analysis.figures, one paper column wide (pass@k: two)
    OUT/generated/methods.tex            setup paragraphs from each folder's resolved config.yaml
    OUT/generated/results.tex            \\input of every table and \\includegraphics of every figure

A run folder is anything with a summary.json (`mitigate reproduce`, `mitigate table`,
`mitigate sweep`) or a theory.json (`mitigate theory`). Only these three folders are written,
each replaced whole and atomically (a folder of ours holds `.generated`; a non-empty one without
it is refused, so nothing written by hand is ever replaced); `main.tex` is copied from the
repository's `paper/main.tex` when OUT has none, never overwritten.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import yaml

from analysis import figures as F
from analysis import tables as T
from mitigate.core.io import OutputError, atomic_dir, check_not_input, write_text

GENERATED = ("tables", "figures", "generated")
STAMP = ".generated"
TEMPLATE = Path(__file__).resolve().parents[1] / "paper" / "main.tex"
FLOATS_PER_PAGE = 4  # \clearpage after this many floats: LaTeX holds at most 18 unprocessed ones


class PaperError(ValueError):
    """A run folder or an output the paper command refuses (the message names it)."""


def check_folders(folders: Sequence[Path]) -> None:
    for d in folders:
        if not any((Path(d) / f).is_file() for f in ("summary.json", "theory.json")):
            why = "does not exist" if not Path(d).exists() else "holds neither summary.json nor theory.json"
            raise PaperError(f"'{d}' {why}; give run folders of `mitigate reproduce`, `mitigate sweep`, "
                             "`mitigate table` or `mitigate theory`")


def check_out(out: Path) -> None:
    """Refuse to replace anything that this command did not write."""
    if out.exists() and not out.is_dir():
        raise PaperError(f"--out '{out}' is a file, not a folder")
    for name in GENERATED:
        p = out / name
        if p.exists() and (not p.is_dir() or (any(p.iterdir()) and not (p / STAMP).is_file())):
            raise PaperError(f"'{p}' exists and was not written by `python -m analysis paper` (no {STAMP}); "
                             "move it away: only generated folders are replaced")


def n_params(checkpoint: Path) -> int | None:
    """Parameter count from a safetensors header (no weights loaded); None when unreadable."""
    f = Path(checkpoint) / "model.safetensors"
    try:
        with f.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for k, v in header.items():
        if k != "__metadata__":
            n = 1
            for d in v["shape"]:
                n *= d
            total += n
    return total


def _base_checkpoint(folder: Path, summary: dict) -> Path:
    given = Path(summary.get("base_checkpoint", "base/checkpoint"))
    for cand in (folder / given, given, folder / "base" / "checkpoint"):
        if (cand / "model.safetensors").is_file():
            return cand
    return folder / "base" / "checkpoint"


def _kv(section: dict, skip: Sequence[str] = ("name",)) -> str:
    return ", ".join(f"\\texttt{{{T.latex_escape(k)}}}\\,=\\,{T.latex_escape(_val(v))}" for k, v in section.items()
                     if k not in skip)


def _val(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return str(v)


KL_ESTIMATORS = {
    "full_vocab": "the exact gradient of the sequence-level reverse KL$(\\pi\\,\\|\\,p_0)$: the full-vocabulary KL "
                  "at every visited prefix plus a score-function term for the KL still to come",
    "k3": "the k3 estimator on sampled tokens (as a loss it has the gradient of the forward KL$(p_0\\,\\|\\,\\pi)$)",
}


def settings_table(summary: dict) -> T.Table | None:
    """Each trained method's objective, divergence, teacher, other objective fields and regularizers."""
    b = summary.get("budget", {})
    objs, regs = b.get("objectives", {}), b.get("regularizers", {})
    if not objs:
        return None
    cols = [T.Column("method", align="l"), T.Column("objective", align="l"), T.Column("divergence", align="l"),
            T.Column("teacher", align="l"), T.Column("other fields", align=r"p{0.22\linewidth}"),
            T.Column("regularizers", align=r"p{0.3\linewidth}")]
    rows = []
    for m, o in objs.items():
        other = {k: v for k, v in o.items() if k not in ("name", "divergence", "teacher", "ema_decay", "estimator")}
        other = {k.replace("_", " "): v for k, v in other.items()}
        reg = "; ".join(f"{r['name']} (" + ", ".join(f"{k}={_val(v)}" for k, v in r.items() if k != "name") + ")"
                        for r in regs.get(m, [])) or "--"
        teacher = o.get("teacher", "--") + (f" (decay {o['ema_decay']:g})" if o.get("teacher") == "ema" else "")
        div = o.get("divergence", "--") + (f", {o['estimator']}" if "estimator" in o else "")
        rows.append([T.Cell(m), T.Cell(o.get("name", "")), T.Cell(div), T.Cell(teacher),
                     T.Cell(", ".join(f"{k}={_val(v)}" for k, v in other.items()) or "--"), T.Cell(reg)])
    return T.Table("settings", "Training signal of each method (all share the post-training settings above).",
                   cols, rows, wide=True)


def methods_tex(folder: Path, summary: dict, slug: str, heading: str | None) -> str:
    """The setup of one run folder, from its resolved config.yaml and summary.json."""
    cfg_path = folder / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    parts = [f"\\subsection{{{heading}}}"] if heading else []
    task, model = cfg.get("task", {}), cfg.get("model", {})
    pre, tr, ev, rep = cfg.get("pretrain", {}), cfg.get("train", {}), cfg.get("eval", {}), cfg.get("reproduce", {})
    if task:
        parts.append(f"\\paragraph{{Task.}} \\texttt{{{T.latex_escape(task.get('name', ''))}}} with {_kv(task)}.")
    if model:
        count = n_params(_base_checkpoint(folder, summary))
        size = f", {count:,} parameters".replace(",", "{,}") if count else ""
        parts.append(f"\\paragraph{{Model.}} \\texttt{{{T.latex_escape(model.get('name', ''))}}} ({_kv(model)}{size}).")
    if pre:
        parts.append(f"\\paragraph{{Pretraining.}} {pre.get('steps')} steps of next-token training, batch "
                     f"{pre.get('batch_size')}, peak learning rate {_val(pre.get('lr'))} "
                     f"(base model seed {cfg.get('seed')}).")
    if tr:
        est = tr.get("kl_estimator", "k3")
        seeds = summary.get("sweep", {}).get("seeds") or rep.get("seeds", [])
        parts.append(
            f"\\paragraph{{Post-training.}} Every trained method shares {tr.get('steps')} steps $\\times$ "
            f"{tr.get('prompts_per_step')} prompts $\\times$ {tr.get('group_size')} rollouts, learning rate "
            f"{_val(tr.get('lr'))}, sampling temperature {_val(tr.get('temperature'))}, and the KL leash "
            f"$\\beta = {_val(tr.get('kl_coef'))}$ to the frozen base, with "
            f"{KL_ESTIMATORS.get(est, T.latex_escape(est))} (\\texttt{{{T.latex_escape(est)}}}). "
            f"Seeds: {', '.join(map(str, seeds))}. Only the objective and the regularisers differ "
            f"(Table~\\ref{{tab:{slug}-settings}}); budgets in Table~\\ref{{tab:{slug}-budget}}.")
        divs = sorted({o["divergence"] for o in summary.get("budget", {}).get("objectives", {}).values()
                       if "divergence" in o})
        if divs:
            parts.append("Self-distillation minimises the token-level " + " / ".join(
                f"\\texttt{{{T.latex_escape(d)}}}" for d in divs) + " divergence from the student to the "
                "demonstration-conditioned teacher, on the student's own rollouts.")
    if ev:
        ood = T.ood_splits(summary) if summary.get("methods") else []
        parts.append(
            f"\\paragraph{{Evaluation.}} $n = {ev.get('samples')}$ samples per prompt at temperature "
            f"{_val(ev.get('temperature'))} on up to {ev.get('max_prompts') or 'all'} prompts per split: the ID "
            f"\\texttt{{{T.latex_escape(summary.get('id_split', ev.get('id_split', '')))}}} pairs"
            + (" and the OOD splits " + ", ".join(f"\\texttt{{{T.latex_escape(s)}}}" for s in ood) if ood else "")
            + f". Intervals: crossed bootstrap ({rep.get('n_boot', 2000)} replicates; one prompt resample shared by "
            "every method and seed, seeds resampled per method); paired differences from the same replicates.")
    sweep = summary.get("sweep")
    if sweep:
        parts.append(f"\\paragraph{{Sweep.}} {len(sweep['settings'])} settings of "
                     f"\\texttt{{{breakable_path(sweep.get('config', ''))}}} $\\times$ {len(sweep['seeds'])} seeds "
                     f"(Table~\\ref{{tab:{slug}-sweep}}).")
    parts.append(f"\\input{{tables/{slug}-settings}}" if summary.get("budget", {}).get("objectives") else "")
    return "\n\n".join(p for p in parts if p) + "\n"


def breakable_path(path: str) -> str:
    """A path escaped for LaTeX that may break after each slash (long config paths in a column)."""
    return T.latex_escape(path).replace("/", "/\\allowbreak{}")


FIGURE_CAPTIONS = {
    "pass_at_k": "pass@k against k (log scale) on the ID split and each OOD split; bands: 95\\% intervals.",
    "pareto": "ID pass@1 against OOD pass@k of the first OOD split (95\\% intervals); lines: GRPO and SDSD at "
              "weaker updates (weights interpolated with the base), the trade-off a mitigation is judged against.",
    "concept_shares": "Share of each concept among correct samples, per method and prompt distribution; concepts "
                      "ordered by the base model's preference (darkest: its favourite).",
    "training_dynamics": "Training dynamics: mean over seeds (line) and range over seeds (band).",
    "tilt_vs_base": "Exact SDSD tilt against the base probability of each output.",
    "iterated_dynamics": "Share of the top correct output under iterated on-policy SDSD, against the RL optimum.",
    "marginal_bias": "Bias of the mitigations against the number of demonstrations M.",
    "probe_tilt_vs_shift": "Predicted against measured log shift of concept shares after SDSD.",
    "paired_differences": "Paired differences against GRPO and SDSD (method minus reference) on the headline "
                          "metrics, 95\\% crossed-bootstrap intervals; filled: the interval excludes 0.",
    "collapse_over_training": "The collapse over training: probe pass@1, pass@n and concepts among r correct "
                              "samples against the step; mean over seeds (line) and range (band).",
}


def draw_figures(folder: Path, summary: dict | None, theory: dict | None, out: Path, slug: str,
                 order: Sequence[str]) -> list[tuple[str, Path, bool]]:
    """(kind, pdf path, wide) of every figure of one folder, drawn into `out`."""
    made: list[tuple[str, Path, bool]] = []

    def add(kind: str, paths, wide: bool = False):
        for p in paths or []:
            if p.suffix == ".pdf":
                made.append((kind, p, wide))

    if summary is not None:
        wide = len(F.ood_splits(summary)) > 0
        add("pass_at_k", F.plot_pass_at_k(summary, out / f"{slug}-pass_at_k", order), wide)
        if len(summary["methods"]) > 1:
            add("pareto", F.plot_pareto(summary, out / f"{slug}-pareto", order))
        add("concept_shares", F.plot_concept_shares(summary, out / f"{slug}-concept_shares", order))
        add("paired_differences", F.plot_paired_differences(summary, out / f"{slug}-paired_differences"))
        runs = F.dynamics_of(folder, summary)
        if runs:
            add("training_dynamics", F.plot_training_dynamics(runs, out / f"{slug}-training_dynamics", order))
            add("collapse_over_training", F.plot_collapse_over_training(runs, out / f"{slug}-collapse_over_training"))
        if summary.get("sweep"):
            add("sweep", F.plot_sweep(summary, out / f"{slug}-sweep", order))
    if theory is not None and theory.get("exact", {}).get("curves"):
        curves = theory["exact"]["curves"]
        add("tilt_vs_base", F.plot_tilt_vs_base(curves, out / f"{slug}-tilt_vs_base"))
        add("iterated_dynamics", F.plot_iterated_dynamics(curves, out / f"{slug}-iterated_dynamics"))
        add("marginal_bias", F.plot_marginal_bias(curves, out / f"{slug}-marginal_bias"))
        if (folder / "probe_rows.json").is_file():
            rows = json.loads((folder / "probe_rows.json").read_text())
            add("probe_tilt_vs_shift", F.plot_probe(rows, theory.get("probe", {}).get("spearman_rho"),
                                                    out / f"{slug}-probe_tilt_vs_shift"))
    return made


def figure_tex(kind: str, pdf: Path, wide: bool, summary: dict | None = None) -> str:
    env = "figure*" if wide else "figure"
    has_base = "base" in (summary or {}).get("methods", {})
    caption = FIGURE_CAPTIONS.get(kind) or (
        f"Sweep: metric against {T.latex_escape(pdf.stem.split('-sweep_')[-1])} (95\\% intervals)"
        + ("; dashed: the base." if has_base else "."))
    if kind == "pareto" and not (summary or {}).get("tradeoff"):
        caption = "ID pass@1 against OOD pass@k of the first OOD split (95\\% intervals)."
    label = T.slug(pdf.stem)
    return (f"\\begin{{{env}}}[tbp]\n\\centering\n"
            f"\\includegraphics[width=\\linewidth]{{figures/{pdf.name}}}\n"
            f"\\caption{{{caption}}}\n\\label{{fig:{label}}}\n\\end{{{env}}}\n")


def build(folders: Sequence[str | Path], out: str | Path, interval: str = "ci", command: str = "") -> list[Path]:
    """Write OUT/tables, OUT/figures, OUT/generated (and OUT/main.tex when missing); the paths written."""
    folders, out = [Path(f) for f in folders], Path(out)
    if interval not in T.INTERVALS:
        raise PaperError(f"--interval must be one of {', '.join(T.INTERVALS)}, got {interval!r}")
    if not folders:
        raise PaperError("give at least one run folder")
    check_folders(folders)
    check_out(out)
    for name in GENERATED:
        try:
            check_not_input(out / name, folders)
        except OutputError as e:
            raise PaperError(str(e)) from e
    summaries = {f: json.loads((f / "summary.json").read_text()) if (f / "summary.json").is_file() else None
                 for f in folders}
    theories = {f: json.loads((f / "theory.json").read_text()) if (f / "theory.json").is_file() else None
                for f in folders}
    slugs = dict(zip(folders, T.folder_slugs(folders)))
    order = list(dict.fromkeys(m for s in summaries.values() if s for m in s["methods"]))
    written: list[Path] = []
    with atomic_dir(out / "tables") as tdir, atomic_dir(out / "figures") as fdir, \
            atomic_dir(out / "generated") as gdir:
        methods, results = [], []
        for f in folders:
            s, th, slug = summaries[f], theories[f], slugs[f]
            prefix = f"{slug}-"
            what = f"preset \\texttt{{{T.latex_escape(s['preset'])}}}" if s else "theory"
            heading = f"\\texttt{{{T.latex_escape(f.name)}}} ({what})"
            floats = []
            if s is not None:
                tables = T.write_tables(s, f, tdir, prefix, interval, command, order)
                settings = settings_table(s)
                if settings is not None:
                    prov = T.provenance_lines(command, f)
                    write_text(tdir / f"{prefix}settings.tex", T.to_latex(settings, interval, prov, prefix))
                    write_text(tdir / f"{prefix}settings.md", T.to_markdown(settings, interval, prov))
                methods.append(methods_tex(f, s, slug, heading))
                floats += [f"\\input{{tables/{p.stem}}}" for _, p in tables]
            for kind, pdf, wide in draw_figures(f, s, th, fdir, slug, order):
                floats.append(figure_tex(kind, pdf, wide, s))
            section = [f"\\subsection{{{heading}}}"]
            for i, fl in enumerate(floats, 1):
                section.append(fl)
                if i % FLOATS_PER_PAGE == 0:
                    section.append("\\clearpage")
            section.append("\\clearpage")
            results.append("\n".join(section))
        prov = "\n".join(f"% {line}" for line in [f"Generated by: {command}", "Do not edit: regenerate."])
        write_text(gdir / "methods.tex", prov + "\n\\section{Methods}\n\n" + "\n".join(methods))
        write_text(gdir / "results.tex", prov + "\n\\section{Results}\n\n" + "\n\n".join(results) + "\n")
        write_text(gdir / "sources.tex", prov + "\n\\newcommand{\\runfolders}{" + ", ".join(
            f"\\texttt{{{T.latex_escape(f)}}}" for f in folders) + "}\n")
        for name, d in zip(GENERATED, (tdir, fdir, gdir)):
            write_text(d / STAMP, f"written by: {command}\n")
            written += sorted(out / name / p.name for p in d.iterdir() if p.name != STAMP)
    if not (out / "main.tex").exists() and TEMPLATE.is_file():
        write_text(out / "main.tex", TEMPLATE.read_text())
        written.append(out / "main.tex")
    return written
