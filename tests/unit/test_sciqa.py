"""The science multiple-choice task: readers for each format, checked rows, deterministic splits
and option shuffling, prompts with a demonstration slot, answer extraction, the verifier, features,
clear errors that leave nothing behind, and `mitigate train` / `mitigate eval` through the CLI on
a tiny random checkpoint with the fixture dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mitigate import cli
from mitigate import config as C
from mitigate.core.fields import ConfigError
from mitigate.policies import load_policy
from mitigate.policies.hf import HFConfig, HFPolicy, build_tiny_checkpoint
from mitigate.tasks import make_task
from mitigate.tasks.sciqa import SciQAParams, SciQATask, extract_choice, read_records

FIXTURES = Path(__file__).resolve().parents[2] / "mitigate" / "tasks" / "sciqa" / "data"  # shipped with the package
QUESTIONS, EARTH = FIXTURES / "questions.jsonl", FIXTURES / "earth_sciq.jsonl"
OPTIONS = ("Nucleus", "Mitochondrion", "Ribosome", "Golgi apparatus")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()]
    return build_tiny_checkpoint(tmp_path_factory.mktemp("sciqa") / "tiny", "qwen3",
                                 texts=[*texts, "The answer is B. <answer>C</answer> \\boxed{D}"], vocab_size=600)


def params(tiny, **kw) -> SciQAParams:
    return SciQAParams(**{"data": str(QUESTIONS), "tokenizer": str(tiny), "ood_subjects": ["astronomy"],
                          "ood_data": str(EARTH), "ood_format": "sciq", "max_new_tokens": 8, **kw})


@pytest.fixture(scope="module")
def task(tiny):
    return SciQATask(params(tiny))


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def ids_of(task, text: str) -> list[int]:
    return task.tokenizer(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- answer extraction

@pytest.mark.parametrize("text,expected", [
    ("<answer>B</answer>", 1),
    ("Mitochondria make ATP.\n<answer>(B)</answer>", 1),
    ("<answer>b</answer>", 1),  # lower case inside the tag
    ("<answer> C. </answer>", 2),
    ("<answer>B) Mitochondrion</answer>", 1),
    ("<answer>mitochondrion</answer>", 1),  # the option's text
    ("<answer>A</answer> no wait <answer>D</answer>", 3),  # the last tag counts
    ("\\boxed{C}", 2),
    ("so the result is $\\boxed{\\text{A}}$", 0),
    ("The answer is D.", 3),
    ("Answer: (B)", 1),
    ("The correct option is C", 2),
    ("The answer is B, not C. Final answer: C", 2),
    ("Let me think.\nB", 1),
    ("Thinking...\n**(A)**", 0),
    ("Reasoning.\nD.", 3),
    # malformed or ambiguous: no answer
    ("<answer></answer>", -1),
    ("<answer>B or C</answer>", -1),
    ("<answer>E</answer>", -1),  # only four options
    ("<answer>B", -1),  # unclosed tag, no other form
    ("\\boxed{}", -1),
    ("the answer is a mitochondrion", -1),  # an article, not an option letter
    ("Answer: Z", -1),
    ("", -1),
    ("I am not sure, maybe the second one.", -1),
    ("<answer>B</answer> but the answer is C", 1),  # a tag outranks a phrase
    ("B and C are both plausible", -1),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


# ----------------------------------------------------------------------------- readers and rows

def test_readers_for_each_format(tmp_path):
    cases = {
        "mc": {"id": "q1", "question": "Q?", "options": {"A": "x", "B": "y", "C": "z"}, "answer": "C",
               "subject": "bio", "explanation": "because"},
        "sciq": {"question": "Q?", "correct_answer": "y", "distractor1": "x", "distractor2": "z",
                 "distractor3": "w", "support": "text"},
        "arc": {"id": "Mercury_1", "question": {"stem": "Q?", "choices": [{"label": "1", "text": "x"},
                                                                          {"label": "2", "text": "y"}]},
                "answerKey": "2"},
        "gpqa": {"Record ID": "r1", "Question": "Q?", "Correct Answer": "y", "Incorrect Answer 1": "x",
                 "Incorrect Answer 2": "z", "Incorrect Answer 3": "w", "High-level domain": "Physics"},
        "sciknoweval": {"question": "Q?", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "B",
                        "domain": "Chemistry"},
    }
    for fmt, row in cases.items():
        (r,) = read_records(write_rows(tmp_path / f"{fmt}.jsonl", [row]), fmt)
        assert r.question == "Q?" and r.options[r.answer] in ("y", "z"), fmt
    hf_arc = {"id": "a", "question": "Q?", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "A"}
    assert read_records(write_rows(tmp_path / "arc2.jsonl", [hf_arc]), "arc")[0].answer == 0
    records = read_records(QUESTIONS, "mc")
    assert len(records) == 42 and len({r.subject for r in records}) == 4


@pytest.mark.parametrize("row,message", [
    ({"id": "x", "question": "Q?", "options": ["a", "b"]}, "no answer"),
    ({"id": "x", "question": "Q?", "options": ["a", "b"], "answer": ""}, "no answer"),
    ({"id": "x", "question": "Q?", "options": ["a", "b"], "answer": "C"}, "answer 'C' is not one of the 2 options"),
    ({"id": "x", "question": "Q?", "options": ["a"], "answer": "A"}, "at least 2 options"),
    ({"id": "x", "options": ["a", "b"], "answer": "A"}, "missing 'question'"),
    ("{not json", "not valid JSON"),
])
def test_bad_rows_name_file_line_and_problem(tmp_path, row, message):
    good = {"id": "ok", "question": "Q?", "options": ["a", "b"], "answer": "A"}
    path = write_rows(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(ConfigError, match=message) as err:
        read_records(path, "mc")
    assert f"{path}:2" in str(err.value)


def test_unknown_format_missing_file_duplicates_and_empty(tmp_path):
    with pytest.raises(ConfigError, match="bad value 'xml' for 'format'; allowed: mc, sciq, arc, gpqa"):
        SciQAParams(format="xml")
    with pytest.raises(ConfigError, match="unknown dataset format 'xml'"):
        read_records(QUESTIONS, "xml")
    with pytest.raises(ConfigError, match="dataset file not found"):
        read_records(tmp_path / "nope.jsonl", "mc")
    row = {"id": "x", "question": "Q?", "options": ["a", "b"], "answer": "A"}
    with pytest.raises(ConfigError, match="duplicate id 'x'"):
        read_records(write_rows(tmp_path / "dup.jsonl", [row, row]), "mc")
    with pytest.raises(ConfigError, match="holds no questions"):
        read_records(write_rows(tmp_path / "empty.jsonl", []), "mc")


def test_templates_must_have_their_slots():
    with pytest.raises(ConfigError, match="no {demonstration} slot"):
        SciQAParams(teacher_template="Q: {question}\n{options}")
    with pytest.raises(ConfigError, match="must not have a {demonstration}"):
        SciQAParams(student_template="{demonstration} {question} {options}")
    with pytest.raises(ConfigError, match="unknown slot"):
        SciQAParams(teacher_template="{demonstration} {question} {options} {answer}")
    with pytest.raises(ConfigError, match="needs both"):
        SciQAParams(student_template="{question}")
    p = SciQAParams()
    with pytest.raises(ConfigError, match="no {demonstration} slot"):
        p.teacher_template = "{question} {options}"  # validated on assignment too, and undone
    assert "{demonstration}" in p.teacher_template


def test_task_errors_tokenizer_and_data(tmp_path, tiny):
    with pytest.raises(ConfigError, match="tokenizer folder not found"):
        SciQATask(params(tiny, tokenizer=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="task.tokenizer is empty"):
        SciQATask(params(tiny, tokenizer=""))
    nopad = tmp_path / "nopad"
    nopad.mkdir()
    for f in tiny.iterdir():
        nopad.joinpath(f.name).write_bytes(f.read_bytes())
    cfg = json.loads((nopad / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (nopad / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="no pad token"):
        SciQATask(params(tiny, tokenizer=str(nopad)))
    with pytest.raises(ConfigError, match="no question .* has subject 'geology'"):
        SciQATask(params(tiny, ood_subjects=["geology"]))
    bad = write_rows(tmp_path / "bad.jsonl", [{"id": "x", "question": "Q?", "options": ["a", "b"], "answer": "Q"}])
    with pytest.raises(ConfigError, match="answer 'Q' is not one of"):
        SciQATask(params(tiny, data=str(bad), ood_subjects=[]))
    with pytest.raises(ConfigError, match="warmup_answers.*unknown slot"):  # the warm-up's answer texts
        SciQATask(params(tiny, warmup_answers=["{letter} {explanation}"]))


# ----------------------------------------------------------------------------- splits and prompts

def test_splits_are_deterministic_disjoint_and_independent_of_file_order(tmp_path, tiny, task):
    assert task.ood_splits == {"subject_astronomy": "ood_subject_astronomy", "source": "ood_source"}
    ids = {s: [q.id for q in task.prompts(s)] for s in task.splits}
    sizes = {s: len(v) for s, v in ids.items()}
    assert sizes == {"id_val": 7, "id_test": 11, "id_train": 18, "ood_subject_astronomy": 6, "ood_source": 6}
    flat = [i for v in ids.values() for i in v]
    assert len(flat) == len(set(flat)) == 48
    assert all(q.subject == "astronomy" for q in task.prompts("ood_subject_astronomy"))
    assert not any(q.subject == "astronomy" for s in ("id_train", "id_val", "id_test") for q in task.prompts(s))
    lines = QUESTIONS.read_text().splitlines()
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_text("\n".join(lines[::-1]) + "\n")
    again = SciQATask(params(tiny, data=str(reversed_file)))
    for s in task.splits:
        assert again.prompts(s) == task.prompts(s)
    other = SciQATask(params(tiny, seed=1))
    assert [q.id for q in other.prompts("id_train")] != ids["id_train"]
    with pytest.raises(ValueError, match="unknown split"):
        task.prompts("train")


def test_options_are_shuffled_by_id_and_keep_the_answer(tiny, task):
    original = {r.id: r for r in read_records(QUESTIONS, "mc")}
    prompts = [q for s in ("id_train", "id_val", "id_test") for q in task.prompts(s)]
    moved = 0
    for q in prompts:
        r = original[q.id]
        assert sorted(q.options) == sorted(r.options) and q.options[q.answer] == r.options[r.answer]
        moved += q.options != r.options
    assert moved > len(prompts) // 2
    assert len({q.answer for q in prompts}) == 4
    plain = SciQATask(params(tiny, shuffle_options=False))
    assert all(q.options == original[q.id].options for q in plain.prompts("id_train"))


def test_prompts_and_teacher_contexts(task):
    q = task.prompts("id_train")[0]
    text = task.tokenizer.decode(q.tokens)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert q.question in text and all(f"{'ABCD'[i]}) {o}" in text for i, o in enumerate(q.options))
    demo = ids_of(task, f"Because of X. <answer>{q.answer_letter}</answer>") + [task.vocab.eos, task.vocab.pad]
    teacher = task.tokenizer.decode(task.teacher_context(q, np.array(demo)))
    assert f"Because of X. <answer>{q.answer_letter}</answer>\n" in teacher
    assert teacher.index("<answer>" + q.answer_letter) < teacher.index(q.question)
    assert "<|im_end|>\n<|im_start|>assistant" in teacher and teacher.count("<|im_end|>") == 1
    plain = SciQATask(params(Path(task.params.tokenizer), use_chat_template=False, system_prompt="Be brief."))
    assert "<|im_start|>" not in plain.tokenizer.decode(plain.prompts("id_train")[0].tokens)


def test_verify_labels_and_features(task):
    q = task.prompts("id_test")[0]
    wrong = "ABCD"[(q.answer + 1) % 4]
    eos, pad = task.vocab.eos, task.vocab.pad
    rows = [ids_of(task, f"<answer>{q.answer_letter}</answer>") + [eos],
            ids_of(task, f"The answer is {wrong}.") + [eos],
            ids_of(task, "no idea"),  # never ended: still read
            ids_of(task, f"<answer>{q.answer_letter}") + [eos] + ids_of(task, "</answer>")]  # text after EOS is ignored
    width = max(map(len, rows))
    comp = np.array([r + [pad] * (width - len(r)) for r in rows])
    correct, labels = task.verify([q] * 4, comp)
    assert correct.tolist() == [True, False, False, False]
    assert labels.tolist() == [q.answer, -1, -1, -1]
    assert task.choices([q] * 4, comp).tolist() == [q.answer, (q.answer + 1) % 4, -1, -1]
    feats = task.rollout_features(comp, labels, 0.5)
    assert feats.shape == (4, 10 + task.params.feature_buckets)
    # a correct rollout is label_weight/2 + (1 - label_weight)/2 from the origin in squared norm
    assert np.isclose((feats[0] ** 2).sum(), 0.5) and np.isclose((feats[1] ** 2).sum(), 0.25)
    same = task.rollout_features(comp[[0, 0]], labels[[0, 0]], 0.5)
    assert np.allclose(same[0], same[1])


def test_registered_and_resolved_from_config(tiny):
    cfg = C.load(preset="smoke", overrides=[f"task={{name: sciqa, data: {QUESTIONS}, tokenizer: {tiny}}}",
                                            f"model={{name: hf, path: {tiny}}}"])
    assert isinstance(cfg.task, SciQAParams) and isinstance(cfg.model, HFConfig)
    task = make_task(cfg.task)
    policy = HFPolicy.build(cfg.model, task)
    assert task.vocab.size == len(policy.tokenizer)


# ----------------------------------------------------------------------------- the CLI path

def sciqa_config(tmp_path: Path, tiny: Path, **task) -> Path:
    cfg = {"preset": "smoke",
           "task": {"name": "sciqa", "data": str(QUESTIONS), "tokenizer": str(tiny), "ood_subjects": ["astronomy"],
                    "ood_data": str(EARTH), "ood_format": "sciq", "max_new_tokens": 6, **task},
           "model": {"name": "hf", "path": str(tiny), "divergence_chunk": 4},
           "train": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "probe_prompts": 2, "probe_samples": 2},
           "eval": {"samples": 4, "max_prompts": 3}}
    path = tmp_path / "sciqa.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def base_checkpoint(config: Path, out: Path) -> Path:
    """`mitigate pretrain` with `pretrain.steps=0`: the checkpoint as it is, saved as the run's base."""
    assert cli.main(["pretrain", "--config", str(config), "--out", str(out), "--quiet",
                     "--set", "pretrain.steps=0"]) == 0
    return out / "checkpoint"


def test_train_and_eval_through_the_cli(tmp_path, tiny):
    config = sciqa_config(tmp_path, tiny)
    base = base_checkpoint(config, tmp_path / "base")
    for objective in ("grpo", "sdsd"):
        run = tmp_path / f"run-{objective}"
        assert cli.main(["train", "--config", str(config), "--init", str(base), "--out", str(run), "--quiet",
                         "--set", f"train.objective={{name: {objective}}}"]) == 0
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2] and all(np.isfinite(r["loss"]) for r in rows[1:])
        policy, meta = load_policy(run)
        assert isinstance(policy, HFPolicy) and meta["task"]["name"] == "sciqa"
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--ckpt", str(tmp_path / "run-sdsd"), "--out", str(out), "--samples", "4",
                     "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert set(res["ood"]) == {"subject_astronomy", "source"}
    assert res["id"]["n_prompts"] == 3 and list(res["id"]["pass_at_k"]) == ["1", "2", "4"]


def test_bad_input_through_the_cli_leaves_nothing_behind(tmp_path, tiny, capsys):
    base = base_checkpoint(sciqa_config(tmp_path, tiny), tmp_path / "base")
    bad = write_rows(tmp_path / "bad.jsonl", [{"id": "x", "question": "Q?", "options": ["a", "b"]}])
    cases = [["--set", f"task.data={bad}", "--set", "task.ood_subjects=[]"],
             ["--set", "task.teacher_template='Q: {question} {options}'"],
             ["--set", "task.format=xml"]]
    for i, extra in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert cli.main(["train", "--config", str(sciqa_config(tmp_path, tiny)), "--init", str(base),
                         "--out", str(out), "--quiet", *extra]) == 2
        assert not out.exists()
    err = capsys.readouterr().err
    assert "no answer" in err and "no {demonstration} slot" in err and "allowed: mc, sciq" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "base", "sciqa.yaml"]
    out = tmp_path / "pre"
    assert cli.main(["pretrain", "--config", str(sciqa_config(tmp_path, tiny)), "--out", str(out), "--quiet",
                     "--set", "task.warmup_answers=['{answer}']"]) == 2
    assert "unknown slot(s) ['answer']" in capsys.readouterr().err and not out.exists()
