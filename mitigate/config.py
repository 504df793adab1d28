"""The config schema: every hyperparameter is a named field with a default and a one-line help.

A run's config is resolved in one way everywhere: the preset (`mitigate/configs/NAME.yaml`), then
a config file, then `--set key.sub=value` overrides, each merged over the last (`merge`). Sections
`{name: ..., <fields>}` (task, model, train.objective, train.regularizers[i]) resolve through
their registries into the registered config class; merging a section that names a different
entry replaces it, since its fields belong to the other entry. The resolved config is written
into every run folder, so the run folder is the experiment record. Unknown keys, bad values and
out-of-range numbers raise `ConfigError` naming the key and the allowed choices, on construction
and on assignment (`cfg.train.lr = -1` raises); the CLI turns that into exit status 2.

Resolving a config takes two passes (`check`, then the build). The first checks every key, every
value of the core sections (pretrain, train, eval, reproduce, seed, device) and every registered
name against the registries' manifests (`mitigate.registries`), importing nothing heavier than
this module: a typo answers before torch, transformers or scikit-learn load. The second builds the
registered sections, which imports each named entry's module (the task's, the policy's, the
objective's and each regularizer's) and checks the fields inside them.
"""

from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mitigate import plugins
from mitigate.core.fields import ConfigError, Section, build, describe, opt, suggest, to_dict
from mitigate.core.registry import Registry
from mitigate.registries import EMBEDDERS, OBJECTIVES, POLICIES, REGULARIZERS, TASKS

__all__ = ["Config", "ConfigError", "EvalConfig", "PretrainConfig", "ReproduceConfig", "TrainConfig", "build",
           "check", "check_overrides", "describe", "dump", "load", "load_config", "merge", "presets", "resolve",
           "to_dict"]

# Set while `check` runs: registered sections are checked by name only (no module is imported).
_NAMES_ONLY = contextvars.ContextVar("mitigate_config_names_only", default=False)


def registered(registry: Registry, default: str, many: bool = False):
    """A field resolver: `{name: ..., <fields>}` (or a bare name, or a built section) -> the
    registered entry's config section. `many`: a list of such sections."""

    def one(value: Any, where: str) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_dict(value)
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping with a 'name' key, got {value!r}")
        value = {"name": default, **value}
        if _NAMES_ONLY.get():  # the first pass: the name against the manifest; fields in the build
            registry.check(value["name"], f"{where}.name")
            return value
        entry = registry.get(value["name"], f"{where}.name")
        if entry.config is None:
            raise ConfigError(f"{registry.kind} '{entry.name}' registered no config class")
        return build(entry.config, value, where)

    def resolve(value: Any, where: str) -> Any:
        if not many:
            return one(value, where)
        if not isinstance(value, list):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        return [one(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return resolve


# ----------------------------------------------------------------------------- sections

# Bounds of the settings that size memory, checked with the config: far above any run this package
# makes, low enough that a typo (an extra digit, an exponent) is an error at once, not an
# allocation that hangs or fails deep in a run.
MAX_STEPS = 10**7  # optimizer steps (train, pretrain)
MAX_BATCH = 2**20  # prompts or sequences in one step or forward batch
MAX_SAMPLES = 2**16  # samples per prompt (evaluation, probe, training group)
MAX_PROMPT_DRAWS = 10**8  # train.steps x train.prompts_per_step: the prompt order is drawn before the first step
MAX_ROLLOUTS = 2**22  # train.prompts_per_step x train.group_size: the rollouts of one step, held at once

@dataclass
class PretrainConfig(Section):
    steps: int = opt(80, "optimizer steps of next-token pretraining (0: save the model as given, e.g. an hf "
                         "checkpoint)", min=0, max=MAX_STEPS)
    batch_size: int = opt(256, "sequences per pretraining step", min=1, max=MAX_BATCH)
    lr: float = opt(3e-3, "peak AdamW learning rate (cosine decay after warmup)", min=0.0)
    warmup_steps: int = opt(20, "linear warmup steps", min=0)
    weight_decay: float = opt(0.01, "AdamW weight decay", min=0.0)
    log_every: int = opt(10, "steps between metric lines in metrics.jsonl", min=1)
    save_every: int = opt(20, "steps between resume checkpoints in OUT.partial (0: none; see --resume)", min=0)
    on_nonfinite: str = opt("stop", "a non-finite loss or gradient: stop the run (exit 3, last checkpoint kept) or "
                                    "skip the step's update (logged)", choices=("stop", "skip"))


@dataclass
class TrainConfig(Section):
    steps: int = opt(60, "on-policy optimizer steps", min=1, max=MAX_STEPS)
    prompts_per_step: int = opt(64, "prompts per step (each sampled group_size times)", min=1, max=MAX_BATCH)
    group_size: int = opt(8, "rollouts per prompt (GRPO group / SDSD demonstration pool)", min=2, max=MAX_SAMPLES)
    lr: float = opt(3e-5, "AdamW learning rate (constant)", min=0.0)
    kl_coef: float = opt(0.02, "beta: KL(pi || base) leash to the frozen base model, shared by every objective",
                         min=0.0)
    kl_estimator: str = opt("full_vocab", "KL leash estimator: exact reverse-KL gradient over the vocabulary "
                            "(full_vocab) or k3 on sampled tokens (gradient of the forward KL)",
                            choices=("full_vocab", "k3"))
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0.0)
    grad_clip: float = opt(1.0, "max gradient norm (0 disables clipping)", min=0.0)
    inner_epochs: int = opt(1, "optimizer passes over each batch of rollouts", min=1)
    temperature: float = opt(1.0, "sampling temperature of rollouts", min=1e-3)
    eval_every: int = opt(20, "steps between probe evaluations (pass@1, concepts) in metrics.jsonl", min=1)
    probe_prompts: int = opt(32, "ID validation prompts in the periodic probe", min=1, max=MAX_BATCH)
    keep: str = opt("last", "weights the run's checkpoint holds: the last step's, or the probed step's with the best "
                            "ID-validation pass@1 (early stopping; every step still runs and counts in the budget)",
                    choices=("last", "best_probe"))
    probe_samples: int = opt(16, "samples per probe prompt", min=1, max=MAX_SAMPLES)
    horizons: list = opt([], "shorter step counts h < steps whose runs this one also yields, exactly: OUT/horizon-<h>/ "
                             "holds the checkpoint (per train.keep) the same run with steps=h would keep")
    save_every: int = opt(20, "steps between resume checkpoints in OUT.partial (0: none; see --resume)", min=0)
    on_nonfinite: str = opt("stop", "a non-finite loss or gradient: stop the run (exit 3, last checkpoint kept) or "
                                    "skip the step's update (logged)", choices=("stop", "skip"))
    objective: Any = opt({"name": "grpo"}, "training signal: {name: ..., <its fields>}",
                         resolve=registered(OBJECTIVES, "grpo"))
    regularizers: list = opt([], "terms added to the objective: [{name: ..., coef: ..., <fields>}]",
                             resolve=registered(REGULARIZERS, "", many=True))

    def validate(self) -> None:
        draws, rollouts = self.steps * self.prompts_per_step, self.prompts_per_step * self.group_size
        if draws > MAX_PROMPT_DRAWS:
            raise ValueError(f"train.steps x train.prompts_per_step = {draws:,} prompt draws, above the "
                             f"{MAX_PROMPT_DRAWS:,} a run may plan (its prompt order is drawn before the first step); "
                             "lower train.steps")
        if rollouts > MAX_ROLLOUTS:
            raise ValueError(f"train.prompts_per_step x train.group_size = {rollouts:,} rollouts per step, above the "
                             f"{MAX_ROLLOUTS:,} one step may hold in memory")


@dataclass
class EvalConfig(Section):
    samples: int = opt(128, "samples per prompt for pass@k and diversity", min=1, max=MAX_SAMPLES)
    temperature: float = opt(1.0, "sampling temperature at evaluation", min=1e-3)
    batch_size: int = opt(4096, "sequences sampled per forward batch", min=1, max=MAX_BATCH)
    max_prompts: int = opt(64, "cap on prompts per split (0 = all)", min=0)
    id_split: str = opt("id_test", "ID split evaluated: the task's test split (id_test, to report) or its "
                                   "validation split (id_val, to choose settings)",
                        choices=("id_test", "id_val"))
    embedder: str = opt("tfidf", "text tasks: embedder of the diversity among correct answers (tfidf: lexical, "
                                 "minilm: semantic; see mitigate.metrics.semantic)")
    embedder_path: str = opt("", "local model folder of the embedder (minilm: a sentence-transformers folder)")
    embedder_sha256: str = opt("", "expected sha256 of the embedder's weights file, checked on load (empty: unchecked)")
    cluster_threshold: float = opt(0.5, "cosine distance below which correct answers join one cluster (average "
                                        "linkage)", min=0.0, max=2.0)
    vendi_q: float = opt(1.0, "order q of the Vendi score (1: Shannon; larger q weighs the dominant answers more)",
                         min=0.0)
    diversity_r: int = opt(8, "accuracy-free diversity: distinct labels and outputs expected among r correct "
                              "samples per prompt (prompts with fewer than r correct are left out; 0 = off)", min=0)
    uncertainty_language: str = opt("en", "text tasks with marker lists (sciqa): the language whose uncertainty "
                                          "markers ('wait', 'maybe', ...) are counted in responses")
    ratio_test: bool = opt(True, "tasks with an enumerable correct set: the exact log-probabilities of every "
                                 "correct output under the base and the model, for the theory's ratio test")

    def validate(self) -> None:
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"unknown embedder '{self.embedder}' for 'eval.embedder'; allowed: "
                             f"{', '.join(EMBEDDERS.names())}")


@dataclass
class ReproduceConfig(Section):
    methods: list = opt(["base"], "methods to train and compare (base = the pretrained model)")
    seeds: list = opt([0, 1, 2], "training seeds per method")
    method_configs: dict = opt({}, "per-method overrides {method: {train.key: value}}, merged over the config")
    paired_against: list = opt(["grpo", "sdsd"], "methods every other method is compared with (paired intervals)")
    tradeoff_methods: list = opt(["grpo", "sdsd"], "methods whose weaker versions (weights interpolated with "
                                 "the base) draw the trade-off curves a mitigation is judged against")
    interpolation: list = opt([0.25, 0.5, 0.75], "interpolation weights alpha of the trade-off curves: "
                              "theta_base + alpha (theta_trained - theta_base)")
    n_boot: int = opt(2000, "crossed-bootstrap replicates for intervals, paired differences and rank intervals",
                      min=100, max=10**6)
    demo_bias_samples: int = opt(64, "samples per demonstration in the base model's demonstration-bias probe",
                                 min=1, max=MAX_SAMPLES)
    sharpening: list = opt([], "sharpening control: the base sampled at these temperatures (< eval.temperature; "
                               "no training), rows base@tT and a curve every method is judged against (when "
                               "'base' is among reproduce.methods)")
    primary: list = opt([], "pre-registered primary endpoints, Holm-corrected as one family: [{name, method, "
                            "reference, split, metric, direction: less|greater, margin}] (see metrics.primary)")
    alpha: float = opt(0.05, "family-wise error rate of the primary endpoints (Holm)", min=1e-6, max=0.5)
    strata: dict = opt({}, "prompt strata of the ID split by the base's success probability p, measured once "
                           "on its own samples: {NAME: {low: 0.0, high: 0.2, samples: 512, seed: 1000}} keeps the "
                           "prompts with low < p < high as result key NAME (tables, intervals, primary endpoints)")


@dataclass
class Config(Section):
    preset: str = opt("default", "name of the preset this config started from")
    seed: int = opt(0, "one seed fixes task, init, sampling and data order", min=0, max=2**32 - 1)
    device: str = opt("cpu", "device when not under `accelerate launch`", choices=("cpu", "cuda", "auto"))
    task: Any = opt({"name": "graph"}, "the task: {name: graph, <its fields>}", resolve=registered(TASKS, "graph"))
    model: Any = opt({"name": "tiny_gpt"}, "the policy: {name: tiny_gpt, <its fields>}",
                     resolve=registered(POLICIES, "tiny_gpt"))
    pretrain: PretrainConfig = opt(PretrainConfig, "base-model pretraining")
    train: TrainConfig = opt(TrainConfig, "on-policy post-training")
    eval: EvalConfig = opt(EvalConfig, "evaluation")
    reproduce: ReproduceConfig = opt(ReproduceConfig, "the `mitigate reproduce` comparison")


# ----------------------------------------------------------------------------- files & overrides

PRESET_DIR = Path(__file__).parent / "configs"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config '{path}' is a folder; give a YAML file (e.g. {path / 'config.yaml'})")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    except OSError as e:  # e.g. no permission to read it
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e})") from e
    except ValueError as e:  # a number YAML reads but Python refuses (an integer of thousands of digits)
        raise ConfigError(f"config file {path}: {str(e).split(';')[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    return data


def merge(base: dict, extra: dict) -> dict:
    """The one override rule: `extra` over `base`, recursively for mappings; lists and scalars are
    replaced. A registered section whose `name` changes is replaced whole: its fields belong to
    the other entry."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            renamed = "name" in value and "name" in old and value["name"] != old["name"]
            out[key] = dict(value) if renamed else merge(old, value)
        else:
            out[key] = value
    return out


def nest(dotted: dict) -> dict:
    """{"train.lr": 1e-4} -> {"train": {"lr": 1e-4}}: the keys of an override entry are paths."""
    out: dict = {}
    for key, value in dotted.items():
        for part in reversed(str(key).split(".")[1:]):
            value = {part: value}
        out = merge(out, {str(key).split(".")[0]: value})
    return out


def apply_override(data: dict, assignment: str) -> dict:
    """`a.b.c=value` (value parsed as YAML) merged into a nested mapping."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML: {e}") from e
    except ValueError as e:  # e.g. an integer of thousands of digits: Python refuses to convert it
        shown = assignment if len(assignment) <= 60 else f"{assignment[:40]}... ({len(raw)} characters)"
        raise ConfigError(f"override {shown!r}: {str(e).split(';')[0]}") from e
    return merge(data, nest({key.strip(): value}))


def check(data: dict) -> None:
    """The first pass over a resolved mapping: every key, every core value and every registered name,
    raising `ConfigError` as the build would, without importing any registered entry's module (no
    torch). Fields inside registered sections (task, model, objective, regularizers) are left to
    the build."""
    token = _NAMES_ONLY.set(True)
    try:
        build(Config, data)
    finally:
        _NAMES_ONLY.reset(token)


def check_overrides(overrides: list[str]) -> None:
    """`check` of `--set` overrides alone, over the defaults (what a command that resolves its config
    from a checkpoint can check before loading anything)."""
    data: dict = {}
    for o in overrides:
        data = apply_override(data, o)
    check(data)


def resolve(config: str | Path | None = None, preset: str | None = None, overrides: list[str] = ()) -> dict:
    """The merged mapping `load` builds: preset YAML (default: `default`), then the config file,
    then overrides (after the `mitigate.plugins` entry points are imported)."""
    plugins.load_entry_points()
    data: dict = read_yaml(config) if config else {}
    name = preset or data.get("preset") or "default"
    if name not in presets():
        raise ConfigError(f"unknown preset '{name}';{suggest(name, presets())}")
    resolved = merge(read_yaml(PRESET_DIR / f"{name}.yaml"), data)
    resolved["preset"] = name
    for o in overrides:
        resolved = apply_override(resolved, o)
    return resolved


def load(config: str | Path | None = None, preset: str | None = None, overrides: list[str] = ()) -> Config:
    """Resolve a config: preset YAML (default: `default`), then the config file, then overrides.

    A config file may name its own preset with a top-level `preset:` key."""
    resolved = resolve(config, preset, overrides)
    check(resolved)
    cfg = build(Config, resolved)
    cfg._overrides = list(overrides)  # recorded in the run's meta.json (not a config field)
    return cfg


load_config = load


def from_dict(data: dict, overrides: list[str] = ()) -> Config:
    """A config from a resolved mapping (a run folder's config.yaml or a checkpoint's record)."""
    plugins.load_entry_points()
    for o in overrides:
        data = apply_override(data, o)
    check(data)
    return build(Config, data)


def with_overrides(cfg: Config, entry: dict) -> Config:
    """`cfg` with an override entry merged over it (a method's entry in `reproduce.method_configs`,
    whose keys are dotted paths: `{train.objective: {...}}`)."""
    return build(Config, merge(to_dict(cfg), nest(entry)))


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
