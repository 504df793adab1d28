"""The pieces that put science QA through the usual recipes: the `tiny:ARCH` checkpoint and the
bundled dataset named in configs, `pretrain.steps: 0` (the model as given) and the supervised
warm-up (`pretraining_data` + `HFPolicy.pretraining_loss`), text diversity in evaluation rows and
in the summary, and the config fields that set it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mitigate import config as C
from mitigate.core.fields import ConfigError
from mitigate.core.seeding import seed_everything
from mitigate.metrics import summary as S
from mitigate.metrics.semantic import DIVERSITY_KEYS
from mitigate.policies import Samples, build_policy, load_policy
from mitigate.policies.hf import (
    HFConfig,
    HFPolicy,
    build_tiny_checkpoint,
    check_model_folder,
    load_tokenizer,
    tiny_folder,
)
from mitigate.recipes.evaluate import prompt_rows, text_diversity
from mitigate.recipes.pretrain import pretrain
from mitigate.report import report_markdown
from mitigate.tasks import make_task
from mitigate.tasks.sciqa import SciQAParams, SciQATask, read_records
from mitigate.tasks.sciqa.records import DATA_DIR

TASK = {"name": "sciqa", "data": "bundled:questions.jsonl", "tokenizer": "tiny:qwen3", "ood_subjects": ["astronomy"],
        "ood_data": "bundled:earth_sciq.jsonl", "ood_format": "sciq", "max_new_tokens": 6}
MODEL = {"name": "hf", "path": "tiny:qwen3", "divergence_chunk": 16}


@pytest.fixture(scope="module")
def task():
    return SciQATask(SciQAParams(**{k: v for k, v in TASK.items() if k != "name"}))


@pytest.fixture(scope="module")
def policy(task):
    return HFPolicy.build(HFConfig(**{k: v for k, v in MODEL.items() if k != "name"}), task)


def sciqa_cfg(**sections) -> C.Config:
    return C.load(preset="smoke", overrides=[f"task={json.dumps(TASK)}", f"model={json.dumps(MODEL)}",
                                             *(f"{k}={json.dumps(v)}" for k, v in sections.items())])


# ----------------------------------------------------------------------------- names in configs

def test_tiny_spec_is_one_reproducible_checkpoint(tmp_path):
    folder = tiny_folder("tiny:qwen3")
    assert tiny_folder("tiny:qwen3") == folder  # built once per process
    again = build_tiny_checkpoint(tmp_path / "again", "qwen3")  # what another process or machine builds
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name
    assert load_tokenizer("tiny:qwen3").get_vocab() == load_tokenizer(again).get_vocab()
    check_model_folder("tiny:llama")
    with pytest.raises(ConfigError, match="unknown tiny checkpoint 'tiny:qwen2'; allowed: tiny:llama, tiny:qwen3"):
        check_model_folder("tiny:qwen2")
    with pytest.raises(ConfigError, match="unknown tiny checkpoint"):
        load_tokenizer("tiny:gpt2")


def test_policy_and_task_built_from_tiny_names(task, policy):
    assert policy.tokenizer.get_vocab() == task.tokenizer.get_vocab()
    assert policy.cfg.path == "tiny:qwen3" and len(policy.eos_ids) == 2


def test_bundled_dataset_ships_with_the_package():
    assert DATA_DIR.parent.name == "sciqa" and (DATA_DIR / "README.md").is_file()
    assert len(read_records("bundled:questions.jsonl", "mc")) == 42
    assert len(read_records("bundled:earth_sciq.jsonl", "sciq")) == 6
    with pytest.raises(ConfigError, match="no bundled dataset 'nope.jsonl'; bundled: bundled:earth_sciq.jsonl, "
                                          "bundled:questions.jsonl"):
        read_records("bundled:nope.jsonl", "mc")
    toml = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"tasks/sciqa/data/*.jsonl"' in toml  # package data: an installed package finds the files


# ----------------------------------------------------------------------------- pretrain: as given, or a warm-up

def test_pretrain_zero_steps_saves_the_checkpoint_as_given(tmp_path):
    cfg = sciqa_cfg(pretrain={"steps": 0})
    out = pretrain(cfg, tmp_path / "base", quiet=True)
    saved = load_file(out / "checkpoint" / "model.safetensors")
    given = load_file(tiny_folder("tiny:qwen3") / "model.safetensors")
    assert set(saved) == set(given) and all(torch.equal(saved[k], given[k]) for k in given)
    policy, meta = load_policy(out)
    assert isinstance(policy, HFPolicy) and meta["task"] == C.to_dict(cfg.task)
    assert not (out / "metrics.jsonl").exists()  # no step was taken
    with pytest.raises(ConfigError, match="'pretrain.steps' must be >= 0"):
        sciqa_cfg(pretrain={"steps": -1})


def test_graph_pretrain_zero_steps_is_the_fresh_initialisation(tmp_path, smoke_cfg):
    cfg = C.with_overrides(smoke_cfg, {"pretrain.steps": 0})
    out = pretrain(cfg, tmp_path / "base", quiet=True)
    seed_everything(cfg.seed)
    fresh = build_policy(cfg.model, make_task(cfg.task)).model.state_dict()
    saved = load_policy(out)[0].model.state_dict()
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)


def test_warmup_data_teaches_only_the_answers_of_id_train(task):
    tokens, mask = task.pretraining_data()
    train = task.prompts("id_train")
    answers = task.params.warmup_answers
    assert tokens.shape[0] == len(train) * len(answers) and mask.dtype == bool
    for i, q in enumerate(np.repeat(train, len(answers))):
        n = len(q.tokens)
        assert tokens[i, :n].tolist() == q.tokens and not mask[i, :n].any()
        target = tokens[i][mask[i]].tolist()
        assert target[-1] == task.vocab.eos and (tokens[i, n + len(target):] == task.vocab.pad).all()
        text = task.completion_text(target)
        assert text == answers[i % len(answers)].format(letter=q.answer_letter, option=q.options[q.answer])
        assert task.verify([q], np.array([target]))[0][0]  # every warm-up answer is read as correct
    with pytest.raises(ConfigError, match=r"unknown slot\(s\) \['question'\]"):
        SciQAParams(data="x", warmup_answers=["{question}"])
    with pytest.raises(ConfigError, match="warmup_answers is empty"):
        SciQAParams(data="x", warmup_answers=[])


def test_pretraining_loss_is_the_masked_cross_entropy(task, policy):
    tokens, mask = (torch.from_numpy(a) for a in task.pretraining_data())
    tokens, mask = tokens[:5], mask[:5]
    model = policy.model
    model.zero_grad()
    loss = policy.pretraining_loss(tokens, mask)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    attn = torch.ones_like(tokens)  # right padding after the last target: never attended by a target
    logits = model(input_ids=tokens, attention_mask=attn, use_cache=False).logits[:, :-1].float()
    keep = mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[keep], tokens[:, 1:][keep])
    nll.backward()
    assert loss.item() == pytest.approx(nll.item(), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    model.zero_grad()


# ----------------------------------------------------------------------------- diversity in evaluation rows

class FixedPolicy:
    """Returns the given completions, in order, whatever it is asked."""

    def __init__(self, completions: list[list[int]]):
        self.tokens = torch.tensor(completions)

    def sample(self, contexts, max_new_tokens, temperature=1.0, generator=None, batch_size=4096, progress=None):
        assert len(contexts) == len(self.tokens)
        return Samples(tokens=self.tokens, mask=torch.ones_like(self.tokens), token_entropy=torch.zeros(len(contexts)))


def encode(task, text: str, width: int = 24) -> list[int]:
    ids = task.tokenizer(text, add_special_tokens=False)["input_ids"] + [task.vocab.eos]
    assert len(ids) <= width
    return ids + [task.vocab.pad] * (width - len(ids))


def test_prompt_rows_add_text_diversity_of_correct_answers(task):
    q = task.prompts("id_test")[0]
    right, wrong = q.answer_letter, "ABCD".replace(q.answer_letter, "")[0]
    texts = [f"<answer>{right}</answer>", f"The answer is {right}.", f"<answer>{right}</answer>",
             f"<answer>{wrong}</answer>"]
    cfg = C.EvalConfig()
    rows = prompt_rows(FixedPolicy([encode(task, t) for t in texts]), task, [q], 4, 1.0, None, 64,
                       diversity=text_diversity(task, cfg))
    row = rows[0]
    assert row["pass_at_k"]["1"] == pytest.approx(0.75)
    # the three correct answers: two identical, one in other words (TF-IDF: lexical)
    assert {k for k in row if k.startswith("lexical_")} == {"lexical_cosine_distance", "lexical_vendi",
                                                             "lexical_clusters"}
    assert row["lexical_clusters"] == 2.0 and 1.0 < row["lexical_vendi"] < 2.0
    assert 0.0 < row["lexical_cosine_distance"] < 1.0
    plain = prompt_rows(FixedPolicy([encode(task, t) for t in texts]), task, [q], 4, 1.0, None, 64)
    assert {k: v for k, v in row.items() if not k.startswith("lexical_")} == plain[0]


def test_tasks_without_texts_keep_their_rows(smoke_task):
    assert text_diversity(smoke_task, C.EvalConfig()) is None  # the graph task offers no completion texts


def test_eval_fields_are_checked():
    cfg = C.EvalConfig()
    assert (cfg.embedder, cfg.embedder_path, cfg.cluster_threshold, cfg.vendi_q) == ("tfidf", "", 0.5, 1.0)
    with pytest.raises(ConfigError, match="unknown embedder 'bert' for 'eval.embedder'; allowed: .*minilm.*tfidf"):
        C.load(preset="smoke", overrides=["eval.embedder=bert"])
    with pytest.raises(ConfigError, match="'eval.cluster_threshold' must be <= 2.0"):
        C.load(preset="smoke", overrides=["eval.cluster_threshold=3"])
    with pytest.raises(ConfigError, match="'eval.vendi_q' must be >= 0.0"):
        C.load(preset="smoke", overrides=["eval.vendi_q=-1"])


def test_embedder_settings_are_checked_before_work(task):
    with pytest.raises(ConfigError, match="embedder 'tfidf' does not take eval.embedder_path"):
        text_diversity(task, C.EvalConfig(embedder_path="/models/x"))
    with pytest.raises(ConfigError, match="embedder 'minilm'"):  # no folder (or no package): named either way
        text_diversity(task, C.EvalConfig(embedder="minilm", embedder_path="/nonexistent/minilm"))


# ----------------------------------------------------------------------------- summary and report

GRAPH_SCALARS = ("distinct_correct", "concepts", "concept_entropy", "top_concept_share", "token_entropy")


def rows_of(extra: tuple, seeds=(0, 1), prompts=3) -> dict:
    rng = np.random.default_rng(0)
    return {s: {"id": [{"pass_at_k": {"1": float(rng.random())}, **{k: float(rng.random()) for k in GRAPH_SCALARS},
                        **{k: float(rng.random()) for k in extra}} for _ in range(prompts)]} for s in seeds}


def test_text_diversity_is_summarised_and_graph_rows_are_not_changed():
    assert S.SCALARS[:5] == GRAPH_SCALARS and set(DIVERSITY_KEYS) <= set(S.SCALARS)
    graph_row = rows_of(())[0]["id"][0]
    assert S.metric_keys(graph_row) == [("pass_at_k", "1"), *((k,) for k in GRAPH_SCALARS)]
    lexical = ("lexical_cosine_distance", "lexical_vendi", "lexical_clusters")
    rows = {"grpo": rows_of(lexical), "sdsd": rows_of(lexical)}
    out, _ = S.summarize(rows, n_boot=100)
    for key in lexical:
        assert key in out["sdsd"]["id"] and len(out["sdsd"]["ci95"]["id"][key]) == 2
        assert set(out["sdsd"]["paired"]["grpo"]["id"][key]) == {"mean", "ci95"}
    md = report_markdown({"preset": "t", "wall_seconds": 1.0, "methods": out})
    assert "| lexical cosine distance | lexical Vendi | lexical clusters |" in md
    graph = S.summarize({"grpo": rows_of(())}, n_boot=100)[0]
    assert "lexical" not in report_markdown({"preset": "t", "wall_seconds": 1.0, "methods": graph})


# ----------------------------------------------------------------------------- presets

def test_sciqa_presets_resolve_and_the_gpu_one_asks_for_its_folders(tmp_path):
    from mitigate.recipes.reproduce import method_config, reproduce

    for name in ("sciqa-smoke", "sciqa"):
        cfg = C.load(preset=name)
        assert isinstance(cfg.task, SciQAParams) and isinstance(cfg.model, HFConfig)
        assert {"base", "grpo", "sdsd"} < set(cfg.reproduce.methods) and len(cfg.reproduce.methods) >= 4
        for m in cfg.reproduce.methods[1:]:
            method_config(cfg, m)
    gpu = C.load(preset="sciqa")
    assert gpu.pretrain.steps == 0 and gpu.model.activation_checkpointing and gpu.eval.embedder == "minilm"
    with pytest.raises(ConfigError, match="task.data is empty"):
        reproduce(gpu, tmp_path / "out", quiet=True)
    assert not any(tmp_path.iterdir())
