"""Issue 26: what the teacher sees (`teacher_context`) and who the teacher is (`teacher: external`).

The contexts each task builds for hand-made examples, token for token (graph) and slot for slot
(science QA); the `none` context with the live teacher giving exactly zero loss and gradient in every
SDSD-family objective; external teachers of another task, policy kind or vocabulary refused with a
clear message (also through the CLI, exit 2, nothing written); the uncertainty-marker counter on
hand-written responses; config checks and quiet defaults; the paper preset's rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mitigate import cli
from mitigate import config as C
from mitigate.core.fields import ConfigError
from mitigate.metrics.uncertainty import count_markers, marker_stats
from mitigate.objectives import OBJECTIVES, Batch, Context, Teacher
from mitigate.objectives.base import make_term
from mitigate.objectives.external import check_teacher, external_record, load_external
from mitigate.policies import FullScores
from mitigate.policies.hf import build_tiny_checkpoint
from mitigate.policies.tiny_gpt import TinyGPT
from mitigate.recipes.common import checkpoint_record
from mitigate.recipes.reproduce import method_config, objective_record
from mitigate.tasks import make_task
from mitigate.tasks.base import CONTEXT_KINDS, offered_contexts
from mitigate.tasks.graph import BOS, DEMO, EOS, PAD, SEP, Prompt
from mitigate.tasks.sciqa.task import ANSWER_TEXT, TEACHER_TEMPLATE, VERDICT_TEXT, uncertainty_markers

SDSD_FAMILY = ("sdsd", "sdsd_marginal", "sdsd_cmi", "sdsd_anticopy", "sdsd_interp")


# ----------------------------------------------------------------------------- graph contexts
@pytest.fixture(scope="module")
def graph():
    return make_task(C.load(preset="smoke").task)


def test_graph_contexts_exact_tokens(graph):
    q = Prompt(start=7, goal=40, split="id_train")
    demo = np.array([7, 50, 61, 72, 40, EOS, PAD, PAD])  # s, entry, middle, exit, g, then EOS and padding
    ctx = graph.teacher_context
    assert ctx(q, demo) == [DEMO, 7, 50, 61, 72, 40, SEP, 7, 40, SEP]  # full: the pretraining format
    assert ctx(q, demo, kind="full") == ctx(q, demo)
    assert ctx(q, demo, kind="partial", context_tokens=2) == [DEMO, 7, 50, SEP, 7, 40, SEP]
    assert ctx(q, demo, kind="partial") == [DEMO, 7, 50, SEP, 7, 40, SEP]  # floor(0.5 x 5) = 2
    assert ctx(q, demo, kind="partial", context_fraction=0.8) == [DEMO, 7, 50, 61, 72, SEP, 7, 40, SEP]
    assert ctx(q, demo, kind="partial", context_fraction=0.0) == [DEMO, SEP, 7, 40, SEP]
    assert ctx(q, demo, kind="partial", context_tokens=9) == ctx(q, demo)  # j is at most the path
    assert ctx(q, demo, kind="answer") == [DEMO, 72, 40, SEP, 7, 40, SEP]  # the goal-side end: exit node, goal
    assert ctx(q, demo, kind="none") == [BOS, 7, 40, SEP] == q.tokens
    with pytest.raises(ConfigError, match="task 'graph' does not offer teacher_context 'answer_verdict'; "
                                          "it offers: full, partial, answer, none"):
        ctx(q, demo, kind="answer_verdict", rollout_correct=True)
    with pytest.raises(ConfigError, match="unknown teacher_context 'bogus'"):
        ctx(q, demo, kind="bogus")
    assert offered_contexts(graph) == ("full", "partial", "answer", "none")


class TwoArgTask:
    """A task written before context kinds: `teacher_context(prompt, demonstration)` only."""

    name = "old_style"

    def teacher_context(self, prompt, demonstration):
        return [99, *[int(t) for t in demonstration]]


def tiny_batch(prompts, contexts, tokens, correct, scores=None):
    mask = torch.ones(tokens.shape, dtype=torch.float)
    scores = scores or FullScores(torch.zeros(*tokens.shape, 3), tokens)
    return Batch(prompts=prompts, group_index=torch.tensor([0, 0, 1, 1]), contexts=contexts, tokens=tokens,
                 mask=mask, rewards=correct.float(), correct=correct, labels=torch.zeros(4, dtype=torch.long),
                 scores=scores, old_token_logprobs=torch.zeros(tokens.shape), reference=scores)


def test_the_teacher_builds_each_kind_through_the_task(graph):
    prompts = [Prompt(7, 40, "id_train"), Prompt(8, 41, "id_train")]
    tokens = torch.tensor([[7, 50, 61, 72, 40, EOS], [7, 51, 62, 73, 40, EOS],
                           [8, 52, 63, 74, 41, EOS], [8, 53, 64, 75, 41, EOS]])
    correct = torch.tensor([True, True, False, True])
    batch = tiny_batch(prompts, [p.tokens for p in prompts for _ in range(2)], tokens, correct)
    teacher = Teacher("live", None, None)
    ctx = Context(task=graph, policy=None, reference=None, teacher=teacher, generator=torch.Generator(),
                  reference_generator=torch.Generator(), temperature=1.0, batch_size=64, step=1)
    demos = torch.tensor([1, 0, 3, -1])
    assert teacher.demonstration_contexts(batch, ctx, demos, "answer") == [
        [DEMO, 73, 40, SEP, 7, 40, SEP], [DEMO, 72, 40, SEP, 7, 40, SEP], [DEMO, 75, 41, SEP, 8, 41, SEP],
        [BOS, 8, 41, SEP]]  # -1: no demonstration, the plain prompt (a masked row)
    assert teacher.demonstration_contexts(batch, ctx, demos, "partial", context_tokens=1)[0] == \
        [DEMO, 7, SEP, 7, 40, SEP]
    assert teacher.demonstration_contexts(batch, ctx, demos, "none") == batch.contexts
    assert teacher.demonstration_contexts(batch, ctx, demos) == [
        graph.teacher_context(prompts[0], tokens[1]), graph.teacher_context(prompts[0], tokens[0]),
        graph.teacher_context(prompts[1], tokens[3]), [BOS, 8, 41, SEP]]
    old = Context(task=TwoArgTask(), policy=None, reference=None, teacher=teacher, generator=torch.Generator(),
                  reference_generator=torch.Generator(), temperature=1.0, batch_size=64, step=1)
    assert teacher.demonstration_contexts(batch, old, demos)[0] == [99, 7, 51, 62, 73, 40, EOS]
    assert teacher.demonstration_contexts(batch, old, demos, "none") == batch.contexts  # none needs no task
    for kind in ("partial", "answer", "answer_verdict"):
        with pytest.raises(ConfigError, match=f"task 'old_style' does not offer teacher_context '{kind}'; "
                                              "it offers: full, none"):
            teacher.demonstration_contexts(batch, old, demos, kind)


# ----------------------------------------------------------------------------- science QA contexts
@pytest.fixture(scope="module")
def sciqa():
    return make_task(C.load(preset="sciqa-smoke").task)


def encode(task, text):
    return task.tokenizer(text, add_special_tokens=False)["input_ids"] + [task.vocab.eos, task.vocab.pad]


def test_sciqa_contexts_exact_tokens(sciqa):
    q = sciqa.prompts("id_train")[0]
    letter, option = q.answer_letter, q.options[q.answer]
    response = f"It makes energy for the cell. <answer>{letter}</answer>"
    demo = np.array(encode(sciqa, response))
    options = "\n".join(f"{'ABCDEFGH'[i]}) {o}" for i, o in enumerate(q.options))

    def expected(slot):  # the chat-templated teacher prompt with this text in its {demonstration} slot
        user = TEACHER_TEMPLATE.format(question=q.question, options=options, demonstration=slot)
        text = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        return sciqa.tokenizer(text, add_special_tokens=False)["input_ids"]

    answer = f"The correct answer is {letter}) {option}."
    assert ANSWER_TEXT.format(letter=letter, option=option) == answer
    assert sciqa.teacher_context(q, demo) == expected(response)
    assert sciqa.teacher_context(q, demo, kind="full") == expected(response)
    ids = sciqa.tokenizer(response, add_special_tokens=False)["input_ids"]
    first3 = sciqa.tokenizer.decode(ids[:3]).strip()
    assert sciqa.teacher_context(q, demo, kind="partial", context_tokens=3) == expected(first3)
    half = sciqa.tokenizer.decode(ids[:len(ids) // 2]).strip()
    assert sciqa.teacher_context(q, demo, kind="partial", context_fraction=0.5) == expected(half)
    assert sciqa.teacher_context(q, demo, kind="answer") == expected(answer)
    assert sciqa.teacher_context(q, demo, kind="answer_verdict", rollout_correct=False) == expected(
        f"{answer}\nYour answer to this question was graded incorrect.")
    assert sciqa.teacher_context(q, demo, kind="answer_verdict", rollout_correct=True) == expected(
        f"{answer}\n" + VERDICT_TEXT.format(verdict="correct"))
    assert sciqa.teacher_context(q, demo, kind="none") == q.tokens
    with pytest.raises(ValueError, match="needs the verdict"):
        sciqa.teacher_context(q, demo, kind="answer_verdict")
    assert offered_contexts(sciqa) == CONTEXT_KINDS
    # a demonstration that commits to no option leaves the answer slot empty
    assert sciqa.teacher_context(q, np.array(encode(sciqa, "I do not know.")), kind="answer") == expected("")


# ----------------------------------------------------------------------------- the null: zero gradient
@pytest.fixture(scope="module")
def student(graph):
    torch.manual_seed(0)
    return TinyGPT.build(C.load(preset="smoke").model, graph)


def sampled_batch(policy, task, seed=0, G=6):
    prompts = task.prompts("id_train")[:4]
    contexts = [q.tokens for q in prompts for _ in range(G)]
    s = policy.sample(contexts, task.max_new_tokens, 1.0, torch.Generator().manual_seed(seed))
    mask = s.mask.float()
    correct = torch.zeros(len(contexts), dtype=torch.bool)
    correct[::3] = True  # hand-set verdicts: every group has correct rollouts (demonstrations to draw)
    scores = policy.scores(contexts, s.tokens, mask)
    return Batch(prompts=prompts, group_index=torch.arange(len(prompts)).repeat_interleave(G), contexts=contexts,
                 tokens=s.tokens, mask=mask, rewards=correct.float(), correct=correct,
                 labels=torch.where(correct, 0, -1), scores=scores,
                 old_token_logprobs=scores.token_logprobs().detach(),
                 reference=FullScores(scores.logprobs.detach(), s.tokens))


def run_objective(name, policy, task, weights, **fields):
    entry = OBJECTIVES.get(name)
    cfg = C.build(entry.config, {"name": name, **fields})
    policy.model.zero_grad(set_to_none=True)
    batch = sampled_batch(policy, task)
    ctx = Context(task=task, policy=policy, reference=policy, teacher=weights,
                  generator=torch.Generator().manual_seed(0), reference_generator=torch.Generator(),
                  temperature=1.0, batch_size=4096, step=1)
    loss, scalars = make_term(entry)(batch, ctx, cfg)
    loss.backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    return loss, scalars, grads, batch, ctx


@pytest.mark.parametrize("name", SDSD_FAMILY)
def test_none_with_the_live_teacher_gives_exactly_zero_gradient(student, graph, name):
    extra = {"M": 2} if name != "sdsd" and name != "sdsd_interp" else {}
    loss, scalars, grads, _, _ = run_objective(name, student, graph, Teacher("live", student, student),
                                               teacher_context="none", **extra)
    assert float(loss.detach()) == 0.0 and scalars["masked_prompts"] == 1.0
    assert all(torch.count_nonzero(g) == 0 for g in grads)
    # with a demonstration the same objective has a signal, so the zero above is the null's
    loss, _, grads, _, _ = run_objective(name, student, graph, Teacher("live", student, student), **extra)
    assert any(torch.count_nonzero(g) > 0 for g in grads)


def test_none_teacher_is_the_student_on_its_own_prompt(student, graph):
    """Unmasked, the live none target is the student itself (divergence ~0 at every position); with
    frozen weights (here the base) every rollout has a target: the plain-prompt distribution."""
    teacher = Teacher("live", student, student)
    _, _, _, batch, ctx = run_objective("sdsd", student, graph, teacher, teacher_context="none")
    demos, (t,) = teacher.demonstrations(batch, ctx, 1, context="none")
    assert (demos == -1).all()
    assert batch.divergence(t).abs().max() < 1e-5
    base = Teacher("base", student, student.frozen_copy())
    loss, scalars, grads, batch, ctx = run_objective("sdsd", student, graph, base, teacher_context="none")
    demos, _ = base.demonstrations(batch, ctx, 1, context="none")
    assert torch.equal(demos[:, 0], torch.arange(len(batch.tokens))) and scalars["masked_prompts"] == 0.0


# ----------------------------------------------------------------------------- external teachers
def save_tiny_gpt(folder, preset="smoke", overrides=(), seed=0):
    cfg = C.load(preset=preset, overrides=list(overrides))
    torch.manual_seed(seed)
    policy = TinyGPT.build(cfg.model, make_task(cfg.task))
    policy.save(folder, checkpoint_record(cfg, "base", policy))
    return cfg


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    save_tiny_gpt(root / "base")
    save_tiny_gpt(root / "wide", overrides=["model.n_embd=64", "model.n_layer=1"], seed=1)  # a wider/shallower one
    save_tiny_gpt(root / "other_task", overrides=["task.seed=1"])
    build_tiny_checkpoint(root / "hf_llama", "llama")  # a transformers folder: another kind of model
    build_tiny_checkpoint(root / "hf_small_vocab", "qwen3", vocab_size=300)  # another tokenizer
    return root


def test_external_teacher_refusals(checkpoints, tmp_path):
    smoke = C.load(preset="smoke")
    task, model = C.to_dict(smoke.task), C.to_dict(smoke.model)
    with pytest.raises(ConfigError, match="was pretrained on another task .*task.seed: 0 -> 1"):
        check_teacher(str(checkpoints / "other_task"), task, model)
    with pytest.raises(ConfigError, match="is a hf model and the student a tiny_gpt model.*another architecture"):
        check_teacher(str(checkpoints / "hf_llama"), task, model)
    with pytest.raises(ConfigError, match="does not exist"):
        check_teacher(str(tmp_path / "nowhere"), task, model)
    with pytest.raises(ConfigError, match="teacher_path is empty"):
        check_teacher("", task, model)
    sciqa = C.load(preset="sciqa-smoke")
    with pytest.raises(ConfigError, match="another vocabulary than the task's tokenizer 'tiny:qwen3'"):
        check_teacher(str(checkpoints / "hf_small_vocab"), C.to_dict(sciqa.task), C.to_dict(sciqa.model))
    with pytest.raises(ConfigError, match="is a tiny_gpt model and the student a hf model"):
        check_teacher(str(checkpoints / "wide"), C.to_dict(sciqa.task), C.to_dict(sciqa.model))
    with pytest.raises(ConfigError, match="was made for task 'graph', this run trains on task 'sciqa'"):
        check_teacher(str(checkpoints / "wide"), C.to_dict(sciqa.task), {"name": "tiny_gpt"})
    # compatible: a wider graph base (another width, same task), any hf architecture with the same tokenizer
    record = external_record(str(checkpoints / "wide"), task, model)
    assert record["policy"] == "tiny_gpt" and record["model"]["n_embd"] == 64 and "model.safetensors" in record["files"]
    assert check_teacher("tiny:llama", C.to_dict(sciqa.task), C.to_dict(sciqa.model))[0] == "hf"


def test_external_teacher_loads_frozen_and_distils(checkpoints, graph, student):
    teacher_policy = load_external(str(checkpoints / "wide"), student, graph)
    assert teacher_policy.model.config.n_embd == 64 and not teacher_policy.model.training
    assert not any(p.requires_grad for p in teacher_policy.model.parameters())
    teacher = Teacher("external", student, student)  # loaded on first use from teacher_path
    loss, scalars, grads, batch, ctx = run_objective("sdsd", student, graph, teacher, teacher="external",
                                                     teacher_path=str(checkpoints / "wide"), teacher_context="none")
    assert teacher.weights.model.config.n_embd == 64
    assert scalars["masked_prompts"] == 0.0 and float(loss.detach()) > 0 and any(torch.count_nonzero(g) for g in grads)
    with pytest.raises(ConfigError, match="pretrained on another task"):
        load_external(str(checkpoints / "other_task"), student, graph)


def test_train_refuses_an_incompatible_teacher_before_training(checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--preset", "smoke", "--init", str(checkpoints / "base"), "--out", str(out), "--quiet",
                     "--set", f"train.objective={{name: sdsd, teacher: external, "
                              f"teacher_path: {checkpoints / 'other_task'}}}"])
    assert code == 2 and "pretrained on another task" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- uncertainty markers
RESPONSES = [  # (response, marker occurrences)
    ("The answer is B.", 0),
    ("Wait, let me check. The answer is B.", 2),  # wait, let me check
    ("Hmm, maybe it is C. However, B fits better.", 3),
    ("I'm not sure, perhaps A.", 2),
    ("Perhaps perhaps PERHAPS", 3),
    ("Maybelline is a brand; the answer is D.", 0),  # whole words only
    ("I think the mitochondrion makes ATP.", 1),
    ("It seems right, but I don't know.", 2),  # it seems (not also "seems"), i don't know
    ("<answer>C</answer>", 0),
    ("Actually, on second thought, it might be A.", 3),
    ("not\n sure", 1),  # a phrase across whitespace
    ("", 0),
]


def test_uncertainty_marker_counts_on_hand_written_responses():
    markers = uncertainty_markers("en")
    assert {"wait", "hmm", "perhaps", "maybe", "not sure", "however"} <= set(markers)
    for text, n in RESPONSES:
        assert count_markers(text, markers) == n, text
    texts = [t for t, _ in RESPONSES]
    stats = marker_stats(texts, markers, n_tokens=np.arange(len(texts)))
    words = sum(len(t.split()) for t in texts)
    assert stats["uncertainty_rate"] == pytest.approx(100 * sum(n for _, n in RESPONSES) / words)
    assert stats["uncertainty_share"] == pytest.approx(8 / 12)
    assert stats["response_words"] == pytest.approx(words / 12) and stats["response_tokens"] == 5.5
    assert marker_stats([], markers) == {"uncertainty_rate": 0.0, "uncertainty_share": 0.0,
                                         "response_words": 0.0, "response_tokens": 0.0}
    with pytest.raises(ConfigError, match="no uncertainty markers for language 'xx'.*de, en"):
        uncertainty_markers("xx")


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("override,needle", [
    ("{name: sdsd, teacher: external}", "teacher_path' is empty"),
    ("{name: sdsd, teacher_path: runs/x}", "read only with teacher: external"),
    ("{name: sdsd_cmi, context_tokens: 3}", "read only with teacher_context: partial"),
    ("{name: sdsd_marginal, teacher_context: everything}",
     "bad value 'everything' for 'train.objective.teacher_context'; allowed: full, partial"),
])
def test_teacher_settings_are_checked(override, needle):
    with pytest.raises(ConfigError) as err:
        C.load(preset="smoke", overrides=[f"train.objective={override}"])
    assert needle in str(err.value)


@pytest.mark.parametrize("name", SDSD_FAMILY)
def test_new_settings_stay_out_of_summary_records_at_their_defaults(name):
    entry = OBJECTIVES.get(name)
    record = objective_record(C.build(entry.config, {"name": name}))
    assert not {"teacher_context", "context_tokens", "context_fraction", "teacher_path"} & set(record)
    record = objective_record(C.build(entry.config, {"name": name, "teacher_context": "partial",
                                                     "context_tokens": 2}))
    assert record["teacher_context"] == "partial" and record["context_tokens"] == 2


def test_paper_preset_defines_the_context_and_external_rows():
    cfg = C.load(preset="paper")
    rows = {"sdsd_ctx_partial": ("partial", "ema"), "sdsd_ctx_answer": ("answer", "ema"),
            "sdsd_ctx_none": ("none", "ema"), "opd_external": ("none", "external"),
            "sdsd_external": ("full", "external"), "opd_grpo_teacher": ("none", "external")}
    for name, (kind, teacher) in rows.items():
        assert name not in cfg.reproduce.methods
        objective = method_config(cfg, name).train.objective
        assert (objective.teacher_context, objective.teacher) == (kind, teacher), name


def test_reproduce_checks_every_methods_teacher_before_any_work(checkpoints, tmp_path):
    from mitigate.recipes.reproduce import reproduce

    cfg = C.load(preset="smoke", overrides=[
        "reproduce.methods=[grpo, opd_other]", "reproduce.seeds=[0]",
        f"reproduce.method_configs={{opd_other: {{train.objective: {{name: sdsd, teacher: external, "
        f"teacher_path: {checkpoints / 'other_task'}, teacher_context: none}}}}}}"])
    with pytest.raises(ConfigError, match="method 'opd_other': external teacher .* pretrained on another task"):
        reproduce(cfg, tmp_path / "out", quiet=True)
    assert list(tmp_path.iterdir()) == []
