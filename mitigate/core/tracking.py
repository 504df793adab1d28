"""Experiment trackers: the per-step scalars of `metrics.jsonl` also go to TensorBoard, Weights &
Biases, MLflow, ... through the integrations `accelerate` already ships (`accelerate.tracking`).

`metrics.jsonl` stays the record (analysis reads it); a tracker is a live view. Trackers are chosen
with `--report-to NAME[,NAME]` (default `none`; `all`: every tracker whose package is installed)
and are not part of the config: where the copies go does not change a result, so a finished run
stays "the same run" whatever it reported to. Local trackers write under `RUN/trackers/`.

    with Trackers(report_to, run_folder, run_name, config) as trackers:
        log = MetricsLog(run_folder / "metrics.jsonl", mirror=trackers.log)
"""

from __future__ import annotations

from pathlib import Path

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

from mitigate.core.fields import ConfigError

TRACKERS = ("none", "all", *sorted(LOGGER_TYPE_TO_CLASS))
FOLDER = "trackers"


def parse_report_to(value: str | None) -> list[str]:
    """`none` -> [], `all` -> the installed trackers, `a,b` -> [a, b]; unknown or uninstalled -> ConfigError."""
    names = [v.strip() for v in (value or "none").split(",") if v.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"unknown tracker '{unknown[0]}' for --report-to; allowed: {', '.join(TRACKERS)} "
                          "(several: comma-separated)")
    if "none" in names:
        if len(names) > 1:
            raise ConfigError("--report-to: 'none' cannot be combined with other trackers")
        return []
    available = [str(t) for t in get_available_trackers()]
    if "all" in names:
        return sorted(available)
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(f"--report-to {missing[0]}: its package is not installed (pip install {missing[0]}); "
                          f"installed trackers: {', '.join(sorted(available)) or 'none'}")
    return list(dict.fromkeys(names))


def flat_config(cfg: dict, prefix: str = "") -> dict:
    """Nested config -> {"train.lr": 3e-5, ...} with the scalar types trackers accept."""
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[name] = value
        else:
            out[name] = str(value)
    return out


class Trackers:
    """The chosen accelerate trackers for one run (main process only), started as
    `Accelerator.init_trackers` starts them, finished on exit (before the run folder is renamed)."""

    def __init__(self, report_to: str | None, folder: str | Path, run_name: str, config: dict | None = None):
        self.trackers = []
        for name in parse_report_to(report_to):
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(run_name, str(Path(folder) / FOLDER)) if cls.requires_logging_directory else cls(run_name)
            tracker.start()
            if config is not None:
                tracker.store_init_configuration(flat_config(config))
            self.trackers.append(tracker)

    def log(self, row: dict) -> None:
        """The numeric entries of a metrics row at its `step`."""
        values = {k: float(v) for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(values, step=row.get("step"))

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> bool:
        for tracker in self.trackers:
            tracker.finish()
        return False
