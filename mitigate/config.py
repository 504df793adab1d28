"""Typed configs: dataclasses with defaults and one-line help, YAML files, `--set a.b=c` overrides.

A config file is a partial YAML mapping over the dataclass defaults; the fully resolved config is
written into every run folder, so the run folder is the experiment record. Unknown keys, bad
values and out-of-range numbers raise `ConfigError` naming the key and the allowed choices
(the CLI turns that into exit status 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mitigate.tasks.graph import GraphParams


class ConfigError(ValueError):
    """A bad config key or value; the message names it and the allowed choices."""


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, registry: str | None = None):
    """A config field: default, one-line help, and optional validation."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "registry": registry}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        factory = default if callable(default) and not isinstance(default, (list, dict)) else None
        if factory is None:
            import copy

            return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- sections

@dataclass
class ModelConfig:
    n_embd: int = opt(128, "width of the GPT-2 style transformer", min=8)
    n_layer: int = opt(3, "number of transformer blocks", min=1)
    n_head: int = opt(4, "attention heads per block", min=1)
    dropout: float = opt(0.0, "dropout during pretraining (teachers always run with dropout off)",
                         min=0.0, max=0.9)


@dataclass
class PretrainConfig:
    steps: int = opt(80, "optimizer steps of next-token pretraining", min=1)
    batch_size: int = opt(256, "sequences per pretraining step", min=1)
    lr: float = opt(3e-3, "peak AdamW learning rate (cosine decay after warmup)", min=0.0)
    warmup_steps: int = opt(20, "linear warmup steps", min=0)
    weight_decay: float = opt(0.01, "AdamW weight decay", min=0.0)
    log_every: int = opt(10, "steps between metric lines in metrics.jsonl", min=1)


@dataclass
class ObjectiveConfig:
    """Placeholder type for the objective section; the registered objective's own dataclass is
    what actually gets built (see `mitigate.objectives`)."""

    name: str = "grpo"


@dataclass
class TrainConfig:
    steps: int = opt(60, "on-policy optimizer steps", min=1)
    prompts_per_step: int = opt(64, "prompts per step (each sampled group_size times)", min=1)
    group_size: int = opt(8, "rollouts per prompt (GRPO group / SDSD demonstration pool)", min=2)
    lr: float = opt(3e-5, "AdamW learning rate (constant)", min=0.0)
    kl_coef: float = opt(0.02, "beta: k3 KL leash to the frozen base model, shared by every objective", min=0.0)
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0.0)
    grad_clip: float = opt(1.0, "max gradient norm (0 disables clipping)", min=0.0)
    inner_epochs: int = opt(1, "optimizer passes over each batch of rollouts", min=1)
    temperature: float = opt(1.0, "sampling temperature of rollouts", min=1e-3)
    eval_every: int = opt(20, "steps between probe evaluations (pass@1, concepts) in metrics.jsonl", min=1)
    probe_prompts: int = opt(32, "ID validation prompts in the periodic probe", min=1)
    probe_samples: int = opt(16, "samples per probe prompt", min=1)
    objective: Any = opt(ObjectiveConfig, "training signal: {name: ..., <its fields>}", registry="objective")
    regularizers: list = opt([], "terms added to the objective: [{name: ..., coef: ..., <fields>}]",
                             registry="regularizer")


@dataclass
class EvalConfig:
    samples: int = opt(128, "samples per prompt for pass@k and diversity", min=1)
    temperature: float = opt(1.0, "sampling temperature at evaluation", min=1e-3)
    batch_size: int = opt(4096, "sequences sampled per forward batch", min=1)
    max_prompts: int = opt(64, "cap on prompts per split (0 = all)", min=0)
    id_split: str = opt("id_test", "ID split evaluated (id_val to choose settings, id_test to report)",
                        choices=("id_test", "id_val"))


@dataclass
class ReproduceConfig:
    methods: list = opt(["base"], "methods to train and compare (base = the pretrained model)")
    seeds: list = opt([0, 1, 2], "training seeds per method")
    method_configs: dict = opt({}, "per-method train overrides {method: {train.key: value}}")


@dataclass
class Config:
    preset: str = opt("default", "name of the preset this config started from")
    seed: int = opt(0, "one seed fixes task, init, sampling and data order")
    device: str = opt("cpu", "device when not under `accelerate launch`", choices=("cpu", "cuda", "auto"))
    task: GraphParams = opt(GraphParams, "the controlled graph task")
    model: ModelConfig = opt(ModelConfig, "the policy network")
    pretrain: PretrainConfig = opt(PretrainConfig, "base-model pretraining")
    train: TrainConfig = opt(TrainConfig, "on-policy post-training")
    eval: EvalConfig = opt(EvalConfig, "evaluation")
    reproduce: ReproduceConfig = opt(ReproduceConfig, "the `mitigate reproduce` comparison")


# ----------------------------------------------------------------------------- building

def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" did you mean '{close[0]}'?" if close else ""
    return f"{hint} allowed: {', '.join(sorted(allowed))}"


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"bad value {value!r} for '{where}'; allowed: {', '.join(map(str, choices))}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-5` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{where}' must be a string, got {value!r}")
        return value
    if typ is list and not isinstance(value, list):
        raise ConfigError(f"'{where}' must be a list, got {value!r}")
    if typ is dict and not isinstance(value, dict):
        raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
    return value


def _check_range(value: Any, meta: dict, where: str) -> None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"bad value {value!r} for '{where}'; allowed: {', '.join(map(str, meta['choices']))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value < lo:
            raise ConfigError(f"'{where}' must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(f"'{where}' must be <= {hi}, got {value}")


def _registered(kind: str, spec: Any, where: str) -> Any:
    """Build an objective/regularizer config from `{name: ..., **fields}` via its registry."""
    from mitigate import registry  # late: registries import config for `opt`

    if dataclasses.is_dataclass(spec):
        spec = dataclasses.asdict(spec)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"'{where}' must be a mapping with a 'name' key, got {spec!r}")
    cls = registry.config_class(kind, spec["name"], where)
    return build(cls, spec, where)


def build(cls: type, data: dict | None, where: str = "") -> Any:
    """Instantiate dataclass `cls` from a (partial) mapping, recursing into sections."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"'{where or 'config'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" did you mean '{_join(where, close[0])}'?" if close else ""
            raise ConfigError(f"unknown config key '{_join(where, key)}';{hint} "
                              f"allowed in '{where or 'config'}': {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        reg = f.metadata.get("registry")
        if name not in data:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if reg == "objective":
                kwargs[name] = _registered("objective", default() if isinstance(default, type) else default, key)
            elif reg == "regularizer":
                kwargs[name] = [_registered("regularizer", r, f"{key}[{i}]") for i, r in enumerate(default)]
            elif dataclasses.is_dataclass(default):
                kwargs[name] = build(type(default), {}, key)
            else:
                kwargs[name] = default
            continue
        value = data[name]
        typ = hints[name]
        if reg == "objective":
            if isinstance(value, dict) and "name" not in value:  # `--set train.objective.beta=...`
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                value = {"name": getattr(default, "name", None), **value}
            kwargs[name] = _registered("objective", value, key)
        elif reg == "regularizer":
            value = _coerce(value, list, key)
            kwargs[name] = [_registered("regularizer", r, f"{key}[{i}]") for i, r in enumerate(value)]
        elif dataclasses.is_dataclass(typ):
            kwargs[name] = build(typ, value, key)
        else:
            value = _coerce(value, typ, key)
            _check_range(value, f.metadata, key)
            kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


# ----------------------------------------------------------------------------- files & overrides

PRESET_DIR = Path(__file__).parent / "configs"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    return data


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(data: dict, assignment: str) -> dict:
    """`a.b.c=value` (value parsed as YAML) into a nested mapping."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML: {e}") from e
    parts = key.strip().split(".")
    nested: Any = value
    for p in reversed(parts):
        nested = {p: nested}
    return merge(data, nested)


def load(config: str | Path | None = None, preset: str | None = None, overrides: list[str] = ()) -> Config:
    """Resolve a config: preset YAML (default: `default`), then the config file, then overrides.

    A config file may name its own preset with a top-level `preset:` key.
    """
    data: dict = read_yaml(config) if config else {}
    name = preset or data.get("preset") or "default"
    if name not in presets():
        raise ConfigError(f"unknown preset '{name}';{_suggest(name, presets())}")
    resolved = merge(read_yaml(PRESET_DIR / f"{name}.yaml"), data)
    resolved["preset"] = name
    for o in overrides:
        resolved = apply_override(resolved, o)
    return build(Config, resolved)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field, for `mitigate config --help-fields` and docs."""
    rows = []
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not f.metadata.get("registry"):
            rows += describe(type(default), key)
        else:
            rows.append((key, default, f.metadata.get("help", "")))
    return rows
