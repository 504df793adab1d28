"""`mitigate` command line: pretrain, train, eval, reproduce, sweep, table, theory. Parsing only: each
command calls one function of the Python API.

Every command takes `--set key.sub=value` and `--import MODULE_OR_FILE` (a user's registrations);
the run commands also take `--config FILE` and `--preset NAME`. Bad input (unknown key, value,
preset, method, missing checkpoint, an output folder that exists or overlaps an input) exits with
status 2 and a message naming the problem and the allowed choices; nothing is left half-written.

pretrain, train and reproduce work in `OUT.partial` and take `--resume`: the same command plus
`--resume` continues a killed or stopped run from its last checkpoint, bit-identical on CPU.
Exit status: 0 done; 2 bad input (config, checkpoint, output, a resume that cannot be exact);
3 a run stopped by a non-finite loss or gradient (the last good checkpoint stays in OUT.partial);
130 interrupted (Ctrl-C; what can be resumed is kept).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mitigate")
    except metadata.PackageNotFoundError:
        return "unknown"


def _common(p: argparse.ArgumentParser, config: bool = True, out_help: str = "run folder to create") -> None:
    if config:
        p.add_argument("--config", help="YAML config (partial; merged over the preset)")
        p.add_argument("--preset", help="starting preset (default: the config's own, else 'default')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers objectives, regularizers, tasks or "
                        "policies (repeatable)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output this command created")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _resumable(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in OUT.partial from its last checkpoint (same command and "
                        "config; a finished OUT is left as it is)")
    _report_to(p)


def _report_to(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-to", default="none", metavar="TRACKER",
                   help="also send per-step metrics to these accelerate trackers (tensorboard, wandb, mlflow, ...; "
                        "comma-separated, 'all': every installed one; default none). metrics.jsonl stays the "
                        "record; local trackers write under RUN/trackers/")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mitigate",
        description="Reproduce and mitigate the diversity collapse of self-distillation with sampled demonstrations "
                    "(SDSD), set against RL, and rank mitigations on pass@k and OOD accuracy. Commands: pretrain, "
                    "train, eval, reproduce, sweep, table, theory, audit.",
        epilog="`mitigate COMMAND --help` lists a command's options. Exit status: 0 done, 2 bad input (nothing "
               "written), 3 a run stopped on a non-finite value, 130 interrupted.")
    ap.add_argument("--version", action="version", version=f"mitigate {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the base model on the task's pretraining split")
    _common(p)
    _resumable(p)
    p.add_argument("--seed", type=int, help="overrides `seed`")

    p = sub.add_parser("train", help="on-policy post-training from a base checkpoint")
    _common(p)
    _resumable(p)
    p.add_argument("--init", required=True, help="base run folder or checkpoint folder")
    p.add_argument("--seed", type=int, help="overrides `seed`")

    p = sub.add_parser("eval", help="sample n per prompt on ID and OOD splits; write metrics JSON")
    _common(p, config=False, out_help="JSON file to write")
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint folder")
    p.add_argument("--samples", type=int, help="samples per prompt (default: eval.samples = 128)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--demo-bias", action="store_true", help="also measure the demonstration bias")

    p = sub.add_parser("reproduce", help="the whole comparison -> summary.json, summary.md")
    _common(p, out_help="output folder")
    _resumable(p)
    p.add_argument("--base", help="reuse this pretrained base run instead of pretraining (ablation sweeps)")
    p.add_argument("--jobs", type=int, help="worker processes for the method x seed runs (default: one per core "
                                            "on the CPU, 1 on a GPU); one torch thread each, so results do not "
                                            "depend on it")

    p = sub.add_parser("sweep", help="settings x seeds of one config in a local process pool, resumable "
                                     "-> one run folder per cell, summary.json, summary.md")
    p.add_argument("config", help="YAML: the settings are reproduce.methods (overrides in reproduce.method_configs), "
                                  "the seeds reproduce.seeds (e.g. baselines/ablations/entropy.yaml)")
    p.add_argument("--preset", help="starting preset (default: the config's own, else 'default')")
    _common(p, config=False, out_help="sweep folder (re-run the same command to resume it)")
    p.add_argument("--base", help="reuse this pretrained base run instead of pretraining one in OUT/base")
    p.add_argument("--jobs", type=int, help="worker processes (default: one per core); 1 runs in this process")
    p.add_argument("--cell", dest="cells", action="append", metavar="NAME",
                   help="run only this cell (SETTING-seedS, or base); repeatable")
    p.add_argument("--print-commands", action="store_true",
                   help="print one shell command per cell (for a cluster scheduler) and exit")
    _report_to(p)

    p = sub.add_parser("table", help="one report over several reproduce/ablation folders")
    p.add_argument("summaries", nargs="+", help="reproduce output folders or their summary.json")
    p.add_argument("--pool-tasks", action="store_true",
                   help="the folders are one comparison on several task seeds: pool them with a third bootstrap "
                        "level over task seeds, per-task results beside the pooled ones")
    p.add_argument("--shared-only", action="store_true",
                   help="combine summaries evaluated with different settings (n, temperature, ID split, ...; refused "
                        "otherwise): keep only the metrics every one reports and list each one's settings")
    _common(p, config=False, out_help="output folder (summary.md, summary.json)")

    p = sub.add_parser("theory", help="exact checks on enumerable spaces -> theory.json and tables")
    _common(p, config=False, out_help="output folder")
    p.add_argument("--ckpt", help="also probe this trained base model (run folder)")
    p.add_argument("--sdsd", nargs="*", default=[], help="SDSD run folders for the measured concept shift")

    p = sub.add_parser("audit", help="compare checkpoints of one task, from any trainer, with their base: pass@k, "
                                     "diversity, OOD, paired intervals, a verdict -> audit.json, audit.md, figures")
    _common(p, out_help="output folder (audit.json, audit.md and the figures)")
    p.add_argument("--base", required=True, help="the base: a run or checkpoint folder of this package, or a Hugging "
                                                 "Face model folder (then --preset/--config names the task)")
    p.add_argument("--model", dest="models", action="append", required=True, metavar="CKPT",
                   help="a post-trained checkpoint of the same task and vocabulary (repeatable)")
    p.add_argument("--name", dest="names", action="append", metavar="NAME",
                   help="the row name of each --model, in order (default: its folder name)")
    p.add_argument("--samples", type=int, help="samples per prompt (default: eval.samples)")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (the same samples as a reproduce run's seed)")
    p.add_argument("--k", type=int, help="the pass@k of the verdicts (default: the largest the samples allow)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:  # also while the libraries load, before any run has started
        print(f"mitigate {args.command}: interrupted", file=sys.stderr)
        return 130


def _main(args) -> int:
    from mitigate import plugins
    from mitigate.core.fields import ConfigError
    from mitigate.core.io import InputError, OutputError

    try:  # what needs no heavy import is checked first, so these errors answer at once
        _early_checks(args)
        for spec in args.imports:  # a plugin's names are valid once it is imported
            plugins.import_plugin(spec)
        _check_config(args)  # keys, core values, registered names: before torch loads
    except (ConfigError, OutputError) as e:
        print(f"mitigate {args.command}: error: {e}", file=sys.stderr)
        return 2
    import transformers

    transformers.utils.logging.disable_progress_bar()
    from mitigate.core.guard import NonFiniteError
    from mitigate.core.resume import ResumeError
    from mitigate.policies import CheckpointError

    try:
        return _dispatch(args)
    except (ConfigError, CheckpointError, OutputError, InputError, ResumeError) as e:
        print(f"mitigate {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"mitigate {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code


def _early_checks(args) -> None:
    """Flag values and output paths, before torch and transformers load."""
    from mitigate.core.fields import ConfigError
    from mitigate.core.io import check_output_file, plan_run

    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be an integer in [0, 2**32), got {seed}")
    if getattr(args, "samples", None) is not None and args.samples < 1:
        raise ConfigError(f"--samples must be >= 1 (samples per prompt), got {args.samples}")
    if getattr(args, "report_to", "none") != "none":
        from mitigate.core.tracking import parse_report_to

        parse_report_to(args.report_to)
    if args.command == "eval":
        check_output_file(args.out, args.overwrite)
    elif args.command in ("pretrain", "train", "reproduce"):
        inputs = [getattr(args, "init", None), getattr(args, "base", None)]
        plan_run(args.out, args.overwrite, [i for i in inputs if i], args.resume)


def _check_config(args) -> None:
    """The config's first pass (`mitigate.config.check`: keys, core values, registered names), which
    imports no registered entry's module: the commands that resolve a config from a preset and a
    file resolve it here; eval and audit, whose config is a checkpoint's record, check their
    overrides."""
    from mitigate import config as C

    if args.command in ("pretrain", "train", "reproduce", "sweep") or (
            args.command == "audit" and (args.preset or args.config)):  # audit then loads preset and config
        C.check(C.resolve(getattr(args, "config", None), getattr(args, "preset", None), _overrides(args)))
    elif args.command == "audit":  # the base's recorded config plus the overrides
        C.check_overrides(args.overrides)
    elif args.command == "eval":  # eval applies eval.* and device (others are refused later, with that message)
        C.check_overrides([o for o in args.overrides if o.split("=", 1)[0].strip().split(".")[0] in ("eval", "device")])


def _overrides(args) -> list[str]:
    return list(args.overrides) + ([f"seed={args.seed}"] if getattr(args, "seed", None) is not None else [])


def _load(args):
    from mitigate import config as C

    return C.load(getattr(args, "config", None), getattr(args, "preset", None), _overrides(args))


def _dispatch(args) -> int:
    import mitigate

    if args.command == "pretrain":
        out = mitigate.pretrain(_load(args), args.out, args.overwrite, args.quiet, resume=args.resume,
                                report_to=args.report_to)
        print(f"base model written to {out / 'checkpoint'}")
    elif args.command == "train":
        out = mitigate.train(_load(args), args.init, args.out, args.overwrite, args.quiet, resume=args.resume,
                             report_to=args.report_to)
        print(f"trained model written to {out / 'checkpoint'}")
    elif args.command == "eval":
        overrides = list(args.overrides) + ([f"eval.samples={args.samples}"] if args.samples is not None else [])
        res = mitigate.evaluate(args.ckpt, args.out, overrides, args.seed, args.demo_bias, args.quiet,
                                overwrite=args.overwrite)
        pk = res["id"]["pass_at_k"]
        print(f"ID pass@1 {pk['1']:.3f}  pass@{max(pk, key=int)} {pk[max(pk, key=int)]:.3f} -> {args.out}")
    elif args.command == "reproduce":
        out = mitigate.reproduce(_load(args), Path(args.out), args.overwrite, args.quiet, base=args.base,
                                 resume=args.resume, report_to=args.report_to, jobs=args.jobs, imports=args.imports)
        print(f"summary written to {out / 'summary.md'}")
    elif args.command == "sweep":
        from mitigate.recipes import sweep as S

        cfg = _load(args)
        if args.print_commands:
            argv = [args.config] + (["--preset", args.preset] if args.preset else [])
            argv += [a for o in args.overrides for a in ("--set", o)]
            argv += [a for i in args.imports for a in ("--import", i)] + (["--base", args.base] if args.base else [])
            argv += ["--report-to", args.report_to] if args.report_to != "none" else []
            S.print_commands(S.Sweep(cfg, args.out, args.base, args.config), argv)
            return 0
        res = S.sweep(cfg, args.out, args.base, args.jobs, args.overwrite, args.quiet, args.cells, args.imports,
                      config_path=args.config, report_to=args.report_to)
        print(f"sweep: {len(res['trained'])} cell(s) trained, {len(res['skipped'])} already done")
        if res["summary"]:
            print(f"summary written to {Path(args.out) / 'summary.md'}; LaTeX tables and figures: "
                  f"python -m analysis paper {args.out} --out paper")
        else:
            print("cells still missing: run the same command without --cell once they are done")
    elif args.command == "table":
        from mitigate.report import write_combined

        if args.overrides:
            raise mitigate.ConfigError("mitigate table reads finished summaries; it takes no --set overrides")
        if args.pool_tasks and args.shared_only:
            raise mitigate.ConfigError("--shared-only combines unlike summaries into one table; --pool-tasks pools "
                                       "only comparisons run alike (use one or the other)")
        if args.pool_tasks:
            from mitigate.recipes.pool import write_pooled

            out = write_pooled(args.summaries, Path(args.out), overwrite=args.overwrite)
            print(f"pooled table over task seeds written to {out / 'summary.md'}")
        else:
            out = write_combined(args.summaries, Path(args.out), overwrite=args.overwrite, shared_only=args.shared_only)
            print(f"combined table written to {out / 'summary.md'}")
    elif args.command == "audit":
        from mitigate.recipes.audit import audit

        overrides = list(args.overrides) + ([f"eval.samples={args.samples}"] if args.samples is not None else [])
        res = audit(args.base, args.models, Path(args.out), args.names, args.preset, args.config, overrides,
                    args.seed, args.k, args.overwrite, args.quiet)
        for text in res["verdicts"].values():
            print(text)
        # the figures come from analysis/ (installed as mitigate-analysis), which the library never
        # imports: run it as `make reproduce` does, in its own process
        import subprocess

        drawn = subprocess.run([sys.executable, "-m", "analysis", "figures", str(args.out)], capture_output=True,
                               text=True)
        where = f"audit written to {Path(args.out) / 'audit.md'}"
        print(f"{where}, figures beside it" if drawn.returncode == 0 else
              f"{where}; no figures ({drawn.stderr.strip().splitlines()[-1] if drawn.stderr.strip() else 'failed'}): "
              f"mitigate-analysis figures {args.out}")
    elif args.command == "theory":
        from mitigate.recipes.theory import run_theory

        if args.overrides:
            raise mitigate.ConfigError("mitigate theory takes no --set overrides")
        run_theory(Path(args.out), args.ckpt, args.sdsd, args.quiet, overwrite=args.overwrite)
        print(f"theory report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
