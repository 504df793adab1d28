"""The science multiple-choice task: local questions, chat-templated prompts, a verifier on text.

    task: {name: sciqa, data: questions.jsonl, format: mc, tokenizer: /models/qwen3-0.6b,
           ood_subjects: [astronomy]}

Tokenizing with the policy's tokenizer. A task hands the policy token ids (`Prompt.tokens`,
`teacher_context`) and reads token ids back (`verify`), while recipes build the task from its
config section alone (`make_task(cfg.task)`), before and independently of the policy. So the task
names its tokenizer itself: `task.tokenizer` is a folder, normally the model's own folder, loaded
with the same checks as the policy's (`policies.hf.load_tokenizer`), and the `hf` policy refuses
to build on a task whose tokenizer vocabulary differs from its own. A checkpoint saved by the
policy carries the same tokenizer, so the field keeps pointing at a valid folder after training.

Splits: questions whose subject is listed in `ood_subjects` form one OOD split per subject
("subject_<name>": does it generalise to a subject never trained on); `ood_data`, another file,
forms the OOD split "source" (a different source or format). The remaining questions are sorted by
id and divided by `seed` into id_train / id_val / id_test; OOD splits are sorted by id too, so no
split depends on the order of the file. Options are shuffled per question by a seed derived from `seed` and the
question id. A completion's label is the index of the option it commits to when it is correct
(-1 otherwise), so among correct rollouts the label is always the answer: semantic diversity among
correct answers of a text task is measured on the text (`mitigate.metrics.semantic`; evaluation
rows carry it because the task offers `completion_text`).

Pretraining: a real checkpoint starts as given (`pretrain.steps: 0`). With steps > 0, `pretrain`
runs a supervised warm-up on `pretraining_data`: every id_train prompt followed by each of
`warmup_answers` for its correct option. The sciqa-smoke preset uses it to teach a tiny random
model the answer format, so that its samples are sometimes correct and the diversity among correct
answers is measured on real texts.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import numpy as np

from mitigate.core.fields import ConfigError, Section, opt
from mitigate.policies.hf import load_tokenizer
from mitigate.tasks.base import Vocab, context_not_offered, partial_length, register_task
from mitigate.tasks.sciqa.answers import extract_choice
from mitigate.tasks.sciqa.records import FORMATS, LETTERS, Record, read_records

SLOTS = ("question", "options", "demonstration")
# The named default template pair ("demo_in_user"): the teacher's user turn shows a correct
# response to the same question before the question itself.
STUDENT_TEMPLATE = ("Answer the following multiple-choice science question. Reason briefly, then give the "
                    "letter of the correct option as <answer>X</answer>.\n\nQuestion: {question}\n{options}")
TEACHER_TEMPLATE = ("Here is a correct response to the question below:\n\n{demonstration}\n\n"
                    "Now answer the question yourself. Reason briefly, then give the letter of the correct "
                    "option as <answer>X</answer>.\n\nQuestion: {question}\n{options}")
STOP_TOKENS = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>"]
# Answers of the supervised warm-up (`pretraining_data`), in several of the forms the verifier reads.
WARMUP_ANSWERS = ["The answer is {letter}.", "<answer>{letter}</answer>",
                  "{option} is correct. <answer>{letter}</answer>", "Answer: {letter}", "\\boxed{{{letter}}}"]
WARMUP_SLOTS = ("letter", "option")
# What the teacher's {demonstration} slot holds for teacher_context `answer` and `answer_verdict`.
ANSWER_TEXT = "The correct answer is {letter}) {option}."
VERDICT_TEXT = "Your answer to this question was graded {verdict}."
MARKERS_FILE = Path(__file__).parent / "data" / "uncertainty_markers.json"


@cache
def _marker_lists() -> dict:
    return json.loads(MARKERS_FILE.read_text())


def uncertainty_markers(language: str = "en") -> list[str]:
    """The uncertainty markers of `language` from the bundled list (a ConfigError naming the languages
    it has for another)."""
    lists = {k: v for k, v in _marker_lists().items() if not k.startswith("_")}
    if language not in lists:
        raise ConfigError(f"no uncertainty markers for language {language!r} in '{MARKERS_FILE.name}'; it has: "
                          f"{', '.join(sorted(lists))}")
    return list(lists[language])


def template_slots(template: str, where: str) -> set[str]:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"{where}: not a valid template ({e}); write literal braces as {{{{ and }}}}") from e
    unknown = names - set(SLOTS)
    if unknown:
        raise ValueError(f"{where}: unknown slot(s) {', '.join('{' + n + '}' for n in sorted(unknown))}; "
                         f"allowed: {', '.join('{' + s + '}' for s in SLOTS)}")
    return names


@dataclass
class SciQAParams(Section):
    name: str = opt("sciqa", "registered task name")
    data: str = opt("", "JSONL file of questions (ID splits and held-out subjects)")
    format: str = opt("mc", "row format of `data`", choices=FORMATS)
    tokenizer: str = opt("", "folder of the policy's tokenizer (normally the same folder as model.path)")
    seed: int = opt(0, "task seed: fixes the ID split and the option order (not the training seed)", min=0)
    val_fraction: float = opt(0.2, "share of ID questions in id_val (model selection)", min=0.0, max=0.9)
    test_fraction: float = opt(0.3, "share of ID questions in id_test (reported)", min=0.05, max=0.9)
    ood_subjects: list = opt([], "subjects held out of the ID splits, each its own OOD split subject_<name>")
    ood_data: str = opt("", "optional second JSONL file (another source), evaluated as the OOD split `source`")
    ood_format: str = opt("", "row format of `ood_data` (empty: same as `format`)", choices=("", *FORMATS))
    shuffle_options: bool = opt(True, "shuffle each question's options by a seed derived from its id")
    student_template: str = opt(STUDENT_TEMPLATE, "user turn of the student prompt: slots {question}, {options}")
    teacher_template: str = opt(TEACHER_TEMPLATE, "user turn of the teacher prompt: {demonstration} (required), "
                                                  "{question}, {options}")
    system_prompt: str = opt("", "system turn of both prompts (empty: none)")
    use_chat_template: bool = opt(True, "wrap the user turn in the tokenizer's chat template (false: plain text)")
    stop_tokens: list = opt(STOP_TOKENS, "tokens that end a completion for the verifier (those in the vocabulary)")
    max_new_tokens: int = opt(256, "longest completion sampled", min=1, max=2**17)
    feature_buckets: int = opt(256, "hashed bag-of-tokens size in rollout_features (the ot regularizer's cost)",
                               min=8)
    warmup_answers: list = opt(WARMUP_ANSWERS, "answers `pretrain` (steps > 0) teaches after each id_train prompt: "
                                               "slots {letter}, {option} of the correct option")

    def validate(self) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("task.val_fraction + task.test_fraction must leave room for id_train (< 1)")
        student = template_slots(self.student_template, "task.student_template")
        teacher = template_slots(self.teacher_template, "task.teacher_template")
        if "demonstration" not in teacher:
            raise ValueError("task.teacher_template has no {demonstration} slot: the teacher must see a correct "
                             "demonstration")
        if "demonstration" in student:
            raise ValueError("task.student_template must not have a {demonstration} slot (only the teacher sees one)")
        for where, slots in (("student_template", student), ("teacher_template", teacher)):
            if not {"question", "options"} <= slots:
                raise ValueError(f"task.{where} needs both {{question}} and {{options}}")
        if not self.warmup_answers:
            raise ValueError("task.warmup_answers is empty: give at least one answer text, e.g. "
                             "'<answer>{letter}</answer>'")
        for i, text in enumerate(self.warmup_answers):
            if not isinstance(text, str):
                raise ValueError(f"task.warmup_answers[{i}] must be a string, got {text!r}")
            try:
                names = {n for _, n, _, _ in string.Formatter().parse(text) if n is not None}
            except ValueError as e:
                raise ValueError(f"task.warmup_answers[{i}]: not a valid template ({e})") from e
            if names - set(WARMUP_SLOTS):
                raise ValueError(f"task.warmup_answers[{i}]: unknown slot(s) {sorted(names - set(WARMUP_SLOTS))}; "
                                 "allowed: {letter}, {option}")


@dataclass(frozen=True)
class QAPrompt:
    """One question as the policy sees it: options in their shown order, `answer` indexes them."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: int
    subject: str
    split: str
    token_ids: tuple[int, ...] = field(repr=False)

    @property
    def tokens(self) -> list[int]:
        return list(self.token_ids)

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "none"


def shuffled(record: Record, seed: int) -> Record:
    """The record with its options permuted by a generator seeded from (seed, record id)."""
    digest = hashlib.sha256(f"{seed}:{record.id}".encode()).digest()
    order = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(len(record.options))
    options = tuple(record.options[i] for i in order)
    return Record(record.id, record.question, options, int(np.flatnonzero(order == record.answer)[0]),
                  record.subject, record.explanation)


@register_task("sciqa", SciQAParams)
class SciQATask:
    train_split, val_split, test_split = "id_train", "id_val", "id_test"

    def __init__(self, params: SciQAParams):
        self.params, self.name = params, "sciqa"
        if not params.data:
            raise ConfigError("task.data is empty: give a JSONL file of questions")
        if not params.tokenizer:
            raise ConfigError("task.tokenizer is empty: give the folder of the policy's tokenizer "
                              "(normally model.path)")
        self.tokenizer = load_tokenizer(params.tokenizer)  # missing folder, no pad token: ConfigError
        if params.use_chat_template and not self.tokenizer.chat_template:
            raise ConfigError(f"the tokenizer in '{params.tokenizer}' has no chat template; set "
                              "task.use_chat_template=false for plain-text prompts")
        vocab = self.tokenizer.get_vocab()
        self.stop_ids = sorted({vocab[t] for t in params.stop_tokens if t in vocab} |
                               ({self.tokenizer.eos_token_id} - {None}))
        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.stop_ids[0]
        bos = self.tokenizer.bos_token_id
        self.vocab = Vocab(size=len(self.tokenizer), pad=self.tokenizer.pad_token_id, eos=eos,
                           bos=eos if bos is None else bos)
        self.max_new_tokens = params.max_new_tokens
        self._records = self._read()  # every data error surfaces here, before any run starts
        self.ood_splits = {key: split for key, (split, _) in self._ood.items()}

    # ------------------------------------------------------------------ data and splits
    def _read(self) -> dict[str, list[Record]]:
        p = self.params
        records = read_records(p.data, p.format)
        if p.shuffle_options:
            records = [shuffled(r, p.seed) for r in records]
        subjects = sorted({r.subject for r in records})
        held = list(p.ood_subjects)
        for s in held:
            if not isinstance(s, str) or s not in subjects:
                raise ConfigError(f"task.ood_subjects: no question in '{p.data}' has subject {s!r}; "
                                  f"subjects: {', '.join(map(repr, subjects))}")
        self._ood: dict[str, tuple[str, list[Record]]] = {}
        for s in held:
            self._ood[f"subject_{slug(s)}"] = (f"ood_subject_{slug(s)}",
                                               sorted((r for r in records if r.subject == s), key=lambda r: r.id))
        if p.ood_data:
            other = read_records(p.ood_data, p.ood_format or p.format, "task.ood_data")
            if p.shuffle_options:
                other = [shuffled(r, p.seed) for r in other]
            self._ood["source"] = ("ood_source", sorted(other, key=lambda r: r.id))
        pool = sorted((r for r in records if r.subject not in held), key=lambda r: r.id)
        order = np.random.default_rng([p.seed, 0]).permutation(len(pool))
        pool = [pool[i] for i in order]
        n_val, n_test = round(p.val_fraction * len(pool)), round(p.test_fraction * len(pool))
        out = {"id_val": pool[:n_val], "id_test": pool[n_val:n_val + n_test], "id_train": pool[n_val + n_test:]}
        if not out["id_train"]:
            raise ConfigError(f"task: no question left for id_train ({len(pool)} ID questions in '{p.data}')")
        for split, recs in self._ood.values():
            out[split] = recs
        return out

    @property
    def splits(self) -> list[str]:
        return list(self._records)

    def records(self, split: str) -> list[Record]:
        if split not in self._records:
            raise ValueError(f"unknown split '{split}'; allowed: {', '.join(self._records)}")
        return list(self._records[split])

    @cached_property
    def _prompts(self) -> dict[str, list[QAPrompt]]:
        return {split: [QAPrompt(r.id, r.question, r.options, r.answer, r.subject, split,
                                 tuple(self.render(r.question, r.options))) for r in recs]
                for split, recs in self._records.items()}

    def prompts(self, split: str) -> list[QAPrompt]:
        if split not in self._records:
            raise ValueError(f"unknown split '{split}'; allowed: {', '.join(self._records)}")
        return list(self._prompts[split])

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def options_text(options) -> str:
        return "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))

    def chat(self, user: str) -> list[int]:
        """Token ids of a prompt whose user turn is `user`, ready for the assistant's answer."""
        if not self.params.use_chat_template:
            text = (self.params.system_prompt + "\n\n" if self.params.system_prompt else "") + user + "\n"
        else:
            messages = ([{"role": "system", "content": self.params.system_prompt}] if self.params.system_prompt
                        else []) + [{"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def render(self, question: str, options, demonstration: str | None = None) -> list[int]:
        if demonstration is None:
            user = self.params.student_template.format(question=question, options=self.options_text(options))
        else:
            user = self.params.teacher_template.format(question=question, options=self.options_text(options),
                                                       demonstration=demonstration)
        return self.chat(user)

    def completion_text(self, tokens) -> str:
        """The text of a completion: tokens up to the first stop token, special tokens dropped."""
        ids = [int(t) for t in tokens]
        stops = [i for i, t in enumerate(ids) if t in self.stop_ids]
        ids = ids[:stops[0]] if stops else ids
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # context kinds the self-teacher may see (`tasks.base.CONTEXT_KINDS`; `none` is the plain prompt)
    teacher_contexts = ("full", "partial", "answer", "answer_verdict")

    def completion_ids(self, tokens) -> list[int]:
        """A completion's token ids before its first stop token (what `completion_text` decodes)."""
        ids = [int(t) for t in tokens]
        stops = [i for i, t in enumerate(ids) if t in self.stop_ids]
        return ids[:stops[0]] if stops else ids

    def answer_text(self, prompt: QAPrompt, demonstration) -> str:
        """`ANSWER_TEXT` for the option the demonstration commits to (`extract_choice` under this
        prompt's options; a correct demonstration's is the answer); empty when it commits to none."""
        choice = extract_choice(self.completion_text(demonstration), prompt.options)
        return ANSWER_TEXT.format(letter=LETTERS[choice], option=prompt.options[choice]) if choice >= 0 else ""

    def teacher_context(self, prompt: QAPrompt, demonstration, kind: str = "full", rollout_correct: bool | None = None,
                        context_tokens: int = 0, context_fraction: float = 0.5) -> list[int]:
        """The teacher's prompt: what `kind` keeps of the demonstration, as text in the {demonstration}
        slot of the user turn (teacher_template). Only the context is built from text; the completion
        the teacher scores stays as token ids.

            full            the demonstration's text
            partial         the text of its first j tokens (`tasks.base.partial_length`: `context_tokens`, or
                            floor(`context_fraction` x its tokens before the stop token))
            answer          `ANSWER_TEXT` of the option it commits to ("The correct answer is B) ...")
            answer_verdict  that answer, a newline, and `VERDICT_TEXT` with the verifier's verdict on the
                            rollout being scored (`rollout_correct`: "correct" or "incorrect")
            none            the plain student prompt"""
        if kind == "full":
            text = self.completion_text(demonstration).strip()
        elif kind == "partial":
            ids = self.completion_ids(demonstration)
            ids = ids[:partial_length(len(ids), context_tokens, context_fraction)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        elif kind == "answer":
            text = self.answer_text(prompt, demonstration)
        elif kind == "answer_verdict":
            if rollout_correct is None:
                raise ValueError("teacher_context 'answer_verdict' needs the verdict on the rollout (rollout_correct)")
            verdict = VERDICT_TEXT.format(verdict="correct" if rollout_correct else "incorrect")
            text = f"{self.answer_text(prompt, demonstration)}\n{verdict}".strip()
        elif kind == "none":
            return prompt.tokens
        else:
            raise context_not_offered(self, kind)
        return self.render(prompt.question, prompt.options, text)

    # ------------------------------------------------------------------ uncertainty markers
    def uncertainty_markers(self, language: str = "en") -> list[str]:
        """The uncertainty words and phrases of `language` (`data/uncertainty_markers.json`), counted in
        responses by `metrics.uncertainty.marker_stats`."""
        return uncertainty_markers(language)

    # ------------------------------------------------------------------ verifier
    def choices(self, prompts: list[QAPrompt], completions: np.ndarray) -> np.ndarray:
        """[N] option index each completion commits to (-1: none, ambiguous, or not an option)."""
        return np.array([extract_choice(self.completion_text(c), q.options) for q, c in zip(prompts, completions)],
                        dtype=np.int64)

    def verify(self, prompts: list[QAPrompt], completions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(correct [N], labels [N]): correct iff the extracted option is the answer; the label is that
        option's index for correct completions, -1 otherwise."""
        picked = self.choices(prompts, np.asarray(completions))
        correct = picked == np.array([q.answer for q in prompts], dtype=np.int64)
        return correct, np.where(correct, picked, -1)

    def rollout_features(self, completions: np.ndarray, labels: np.ndarray, label_weight: float = 0.5) -> np.ndarray:
        """[N, len(LETTERS) + feature_buckets]: the option one-hot scaled so that two different options are
        `label_weight` apart in squared distance, then a hashed bag of the completion's tokens (before
        the first stop token) scaled to unit norm times sqrt((1 - label_weight) / 2), so two completions
        sharing no token are `1 - label_weight` apart. Incorrect rollouts (label -1) have no option part."""
        comp = np.asarray(completions, dtype=np.int64)
        n, k = len(comp), self.params.feature_buckets
        one_hot = np.zeros((n, len(LETTERS)))
        ok = labels >= 0
        one_hot[np.flatnonzero(ok), labels[ok]] = 1.0
        bag = np.zeros((n, k))
        stop = np.isin(comp, self.stop_ids) | (comp == self.vocab.pad)
        inside = np.cumsum(stop, 1) == 0
        rows = np.repeat(np.arange(n), comp.shape[1])[inside.ravel()]
        np.add.at(bag, (rows, comp[inside] % k), 1.0)
        norm = np.linalg.norm(bag, axis=1, keepdims=True)
        bag = np.divide(bag, norm, out=np.zeros_like(bag), where=norm > 0)
        return np.hstack([np.sqrt(label_weight / 2) * one_hot, np.sqrt((1 - label_weight) / 2) * bag])

    def pretraining_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [N, L], loss_mask [N, L]) of the supervised warm-up: every id_train prompt followed by
        each of `warmup_answers` for its correct option and the EOS token, right-padded with the pad
        id. The loss covers the answer and its EOS, never the prompt. Only id_train questions: the
        evaluated splits are never trained on."""
        rows = []
        for q in self.prompts(self.train_split):
            for template in self.params.warmup_answers:
                text = template.format(letter=q.answer_letter, option=q.options[q.answer])
                answer = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.vocab.eos]
                rows.append((q.tokens, answer))
        width = max(len(c) + len(a) for c, a in rows)
        tokens = np.full((len(rows), width), self.vocab.pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=bool)
        for i, (context, answer) in enumerate(rows):
            tokens[i, :len(context) + len(answer)] = context + answer
            mask[i, len(context):len(context) + len(answer)] = True
        return tokens, mask
