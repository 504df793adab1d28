"""The external teacher: frozen weights other than the student's own, named by path in the config.

    train:
      objective: {name: sdsd, teacher: external, teacher_path: runs/teacher-wide, teacher_context: none}

`teacher_path` is one of

    a mitigate checkpoint     a folder holding mitigate.json (`mitigate pretrain` / `mitigate train` output, or a
                              run folder with checkpoint/): a stronger base (more pretraining steps or width) or
                              a GRPO-trained model
    a transformers folder     (hf policy only) any AutoModelForCausalLM folder with config.json and a tokenizer,
                              or `tiny:ARCH`, loaded with the student's `model` settings (dtype, chunks)

It is checked against the run's task and model before any training (`external_record`, called when
the run is recorded; `load_external` checks again on the loaded weights) and refused with a
ConfigError (exit 2) naming the mismatch:

    another policy kind       a tiny_gpt teacher for an hf student (or the reverse): the teacher must score
                              the student's token ids with the same kind of model
    another task              a mitigate checkpoint recorded for another registered task; for a token-level
                              policy (tiny_gpt: the graph's node ids are the vocabulary) any difference in
                              the task's settings (another graph means other tokens)
    another vocabulary        hf: a tokenizer whose token -> id map differs from the task's, or an output layer
                              of another size than the student's; tiny_gpt: another vocabulary size or fewer
                              positions than the student's

Width, depth and (hf) architecture may differ: a teacher's scores are its own log-probs over the same
vocabulary (`HiddenScores` keep each target's own output projection). `external_record` is what the
run's meta.json records (`recipes.common.run_record`): the path, its resolved folder and the sha256 of
every file in it, the recorded task and model.
"""

from __future__ import annotations

import json
from pathlib import Path

from mitigate.budget import Metered
from mitigate.core.fields import ConfigError, build, to_dict
from mitigate.core.io import sha256_file
from mitigate.core.resume import differences
from mitigate.policies import POLICIES, CheckpointError, checkpoint_meta, load_policy, resolve_checkpoint
from mitigate.policies.hf import HFConfig, HFPolicy, load_tokenizer, local_folder
from mitigate.tasks import TASKS

WHERE = "train.objective.teacher_path"


def teacher_source(path: str) -> tuple[str, Path, dict | None]:
    """(policy name, folder, mitigate record or None) of a teacher path, or a ConfigError."""
    if not path:
        raise ConfigError(f"{WHERE} is empty: teacher 'external' needs the folder of a frozen checkpoint (e.g. "
                          "`mitigate pretrain --preset paper --set model.n_embd=256 --out runs/teacher-wide`)")
    if str(path).startswith("tiny:"):
        return "hf", Path(local_folder(path)), None
    try:
        folder = resolve_checkpoint(path)
    except CheckpointError:
        folder = None
    if folder is not None:
        meta = checkpoint_meta(folder)
        return meta.get("policy", "tiny_gpt"), folder, meta
    if (Path(path) / "config.json").is_file():
        return "hf", Path(path), None
    if not Path(path).exists():
        raise ConfigError(f"external teacher not found: '{path}' ({WHERE}) does not exist")
    raise ConfigError(f"external teacher '{path}' ({WHERE}) is not a checkpoint: no mitigate.json (a mitigate "
                      "checkpoint or run folder) and no config.json (a transformers folder)")


def filled_task(record: dict) -> dict:
    """A recorded task section with the current defaults filled in (records from before a field existed;
    before the task registry: a graph task)."""
    record = {"name": "graph", **record}
    entry = TASKS.get(record["name"], "the teacher's recorded task")
    return to_dict(build(entry.config, record, "task")) if entry.config is not None else record


def check_teacher(path: str, task_section: dict, model_section: dict) -> tuple[str, Path, dict | None, dict | None]:
    """(policy name, folder, mitigate record, recorded task) of the teacher at `path`, checked against the
    run's task and model sections (plain dicts): a ConfigError for every refusal of the module docstring
    that the files show (`load_external` checks the loaded weights too)."""
    policy, folder, meta = teacher_source(path)
    student = model_section.get("name", "tiny_gpt")
    if policy != student:
        raise ConfigError(f"external teacher '{path}' is a {policy} model and the student a {student} model: a "
                          "teacher must score the student's tokens with the same kind of model (another "
                          "architecture); refused")
    recorded = None
    if meta is not None and isinstance(meta.get("task"), dict):
        recorded = filled_task(meta["task"])
        if recorded["name"] != task_section.get("name"):
            raise ConfigError(f"external teacher '{path}' was made for task '{recorded['name']}', this run trains "
                              f"on task '{task_section.get('name')}'; refused")
        if policy != "hf":
            diff = [f"task.{d}" for d in differences(task_section, recorded)]
            if diff:
                shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
                raise ConfigError(f"external teacher '{path}' was pretrained on another task ({shown}; this run -> "
                                  "the teacher): its token "
                                  "ids mean other things than the student's; build the teacher on this task "
                                  "(`mitigate pretrain` with the same task.* settings)")
    if policy == "hf":
        mine = task_section.get("tokenizer") or model_section.get("path")
        if mine:
            theirs, ours = load_tokenizer(folder).get_vocab(), load_tokenizer(local_folder(mine)).get_vocab()
            if theirs != ours:
                raise ConfigError(f"external teacher '{path}' has another vocabulary than the task's tokenizer "
                                  f"'{mine}' ({len(theirs)} vs {len(ours)} tokens, or other ids): the teacher "
                                  "must score the student's token ids; refused")
    return policy, folder, meta, recorded


def external_record(path: str, task_section: dict, model_section: dict) -> dict:
    """What the run records of the teacher at `path` (checked first: `check_teacher`): the path as given,
    its resolved folder, the sha256 of every file in it, its policy, recorded task and model."""
    policy, folder, meta, recorded = check_teacher(path, task_section, model_section)
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    model = (meta.get("config") or {}).get("model") if meta else _config_summary(folder)
    return {"path": str(path), "folder": str(folder.resolve()), "policy": policy, "files": files,
            "task": recorded, "model": model}


def _config_summary(folder: Path) -> dict:
    """What a transformers folder's config.json says of its shape."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: config[k] for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size") if k in config}


def policy_name(policy) -> str | None:
    """The registered name of a policy object (through a `budget.Metered` wrapper)."""
    inner = policy.__dict__.get("_policy", policy)
    return next((n for n in POLICIES.names() if isinstance(inner, POLICIES.get(n).target)), None)


def output_size(policy) -> int:
    return int(policy.model.get_output_embeddings().weight.shape[0])


def load_external(path: str, student, task):
    """The frozen (no-grad, eval-mode) teacher at `path` on the student's device, checked against the
    task and the loaded student (ConfigError: module docstring). Its forwards are counted in the
    student's budget when the student is `budget.Metered` (as reference generations)."""
    name = policy_name(student)
    model_section = {"name": name}
    if isinstance(getattr(student, "cfg", None), HFConfig):
        model_section.update(to_dict(student.cfg))
    _, folder, meta, _ = check_teacher(path, to_dict(task.params), model_section)
    device = next(student.model.parameters()).device
    try:
        if meta is None:  # a transformers folder: the student's settings, the teacher's weights and tokenizer
            cfg = build(HFConfig, {**to_dict(student.cfg), "path": str(folder)}, "model")
            teacher = HFPolicy.from_folder(folder, cfg, device)
        else:
            teacher, _ = load_policy(folder, device)
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"external teacher '{path}' could not be loaded: {type(e).__name__}: {e}") from e
    teacher.model.eval().requires_grad_(False)
    if output_size(teacher) != output_size(student):
        raise ConfigError(f"external teacher '{path}' predicts {output_size(teacher)} tokens and the student "
                          f"{output_size(student)}: another vocabulary; refused")
    positions = getattr(student.model.config, "n_positions", None)
    if positions is not None and getattr(teacher.model.config, "n_positions", positions) < positions:
        raise ConfigError(f"external teacher '{path}' reads {teacher.model.config.n_positions} positions, fewer than "
                          f"the student's {positions}; refused")
    budget = student.__dict__.get("_budget")
    return Metered(teacher, budget, "reference_generations") if isinstance(student, Metered) else teacher
