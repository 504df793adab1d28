"""Multiple-choice science questions from local JSONL files, in several published formats, read into
one record type. Every row is checked; a bad row is a `ConfigError` naming the file, the line and
the problem, raised before anything is written.

    mc           {"id", "question", "options": [..] or {"A": .., ...}, "answer": "B", "subject"?, "explanation"?}
    sciq         {"question", "correct_answer", "distractor1".."distractor3", "support"?}          (SciQ)
    arc          {"id", "question": {"stem", "choices": [{"label", "text"}]}, "answerKey"}        (ARC, AI2 files)
                 or {"id", "question": str, "choices": {"label": [..], "text": [..]}, "answerKey"} (ARC, HF datasets)
    gpqa         {"Record ID"?, "Question", "Correct Answer", "Incorrect Answer 1".."3", "Explanation"?,
                  "High-level domain"?}                                                           (GPQA)
    sciknoweval  {"question", "choices": {"label": [..], "text": [..]}, "answerKey", "domain"?}   (SciKnowEval MCQ)

Rows without an id get one derived from their content, so option shuffling and splits stay fixed
when the file is reordered. A path `bundled:NAME` names a file shipped with the package in
`mitigate/tasks/sciqa/data/` (a small hand-written set for smoke runs and tests; see its README).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mitigate.core.fields import ConfigError

FORMATS = ("mc", "sciq", "arc", "gpqa", "sciknoweval")
BUNDLED = "bundled:"
DATA_DIR = Path(__file__).parent / "data"
LETTERS = "ABCDEFGHIJ"  # at most 10 options per question


@dataclass(frozen=True)
class Record:
    """One question in source order: `options[answer]` is the correct option."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: int
    subject: str = ""
    explanation: str = ""


class RowError(ValueError):
    """A problem with one row; the reader adds the file and line."""


def content_id(prefix: str, *parts: str) -> str:
    return f"{prefix}-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(f"missing '{key}'")
        return ""
    if not isinstance(value, (str, int, float)):
        raise RowError(f"'{key}' must be text, got {type(value).__name__}")
    return str(value).strip()


def _letter_answer(answer, labels: list[str], key: str) -> int:
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise RowError(f"no answer: '{key}' is missing or empty")
    answer = str(answer).strip()
    if answer not in labels:
        raise RowError(f"answer '{answer}' is not one of the {len(labels)} options ({', '.join(labels)})")
    return labels.index(answer)


def read_mc(row: dict) -> Record:
    question = _text(row, "question")
    options = row.get("options")
    if isinstance(options, dict):
        labels, texts = [str(k).strip() for k in options], list(options.values())
    elif isinstance(options, list):
        labels, texts = list(LETTERS[:len(options)]), options
    else:
        raise RowError("'options' must be a list of option texts or a mapping letter -> text")
    answer = _letter_answer(row.get("answer"), labels, "answer")
    rid = _text(row, "id", required=False) or content_id("mc", question, *map(str, texts))
    return Record(rid, question, tuple(str(t).strip() for t in texts), answer, _text(row, "subject", False),
                  _text(row, "explanation", False))


def read_sciq(row: dict) -> Record:
    question, correct = _text(row, "question"), row.get("correct_answer")
    if correct is None or not str(correct).strip():
        raise RowError("no answer: 'correct_answer' is missing or empty")
    options = [str(correct).strip()] + [_text(row, f"distractor{i}") for i in (1, 2, 3)]
    return Record(content_id("sciq", question, *options), question, tuple(options), 0, _text(row, "subject", False),
                  _text(row, "support", False))


def _choices(choices) -> tuple[list[str], list[str]]:
    if isinstance(choices, dict) and isinstance(choices.get("label"), list) and isinstance(choices.get("text"), list):
        return [str(x).strip() for x in choices["label"]], [str(x).strip() for x in choices["text"]]
    if isinstance(choices, list) and all(isinstance(c, dict) and "label" in c and "text" in c for c in choices):
        return [str(c["label"]).strip() for c in choices], [str(c["text"]).strip() for c in choices]
    raise RowError("'choices' must be {label: [...], text: [...]} or [{label, text}, ...]")


def read_arc(row: dict) -> Record:
    q = row.get("question")
    if isinstance(q, dict):  # AI2's own files
        question, (labels, texts) = _text(q, "stem"), _choices(q.get("choices"))
    else:
        question, (labels, texts) = _text(row, "question"), _choices(row.get("choices"))
    answer = _letter_answer(row.get("answerKey"), labels, "answerKey")
    rid = _text(row, "id", False) or content_id("arc", question, *texts)
    return Record(rid, question, tuple(texts), answer, _text(row, "subject", False))


def read_gpqa(row: dict) -> Record:
    question, correct = _text(row, "Question"), row.get("Correct Answer")
    if correct is None or not str(correct).strip():
        raise RowError("no answer: 'Correct Answer' is missing or empty")
    options = [str(correct).strip()] + [_text(row, f"Incorrect Answer {i}") for i in (1, 2, 3)]
    rid = _text(row, "Record ID", False) or content_id("gpqa", question, *options)
    return Record(rid, question, tuple(options), 0, _text(row, "High-level domain", False),
                  _text(row, "Explanation", False))


def read_sciknoweval(row: dict) -> Record:
    question, (labels, texts) = _text(row, "question"), _choices(row.get("choices"))
    answer = _letter_answer(row.get("answerKey"), labels, "answerKey")
    rid = _text(row, "id", False) or content_id("ske", question, *texts)
    return Record(rid, question, tuple(texts), answer, _text(row, "domain", False))


READERS = {"mc": read_mc, "sciq": read_sciq, "arc": read_arc, "gpqa": read_gpqa, "sciknoweval": read_sciknoweval}


def check_record(r: Record) -> None:
    if len(r.options) < 2:
        raise RowError(f"needs at least 2 options, got {len(r.options)}")
    if len(r.options) > len(LETTERS):
        raise RowError(f"at most {len(LETTERS)} options, got {len(r.options)}")
    if any(not o for o in r.options):
        raise RowError("an option is empty")
    if not 0 <= r.answer < len(r.options):
        raise RowError(f"answer index {r.answer} outside the {len(r.options)} options")


def data_path(path: str | Path, where: str = "task.data") -> Path:
    """`path`, or for `bundled:NAME` the file NAME shipped in the package's data folder."""
    text = str(path)
    if not text.startswith(BUNDLED):
        return Path(path)
    name = text[len(BUNDLED):]
    shipped = sorted(p.name for p in DATA_DIR.glob("*.jsonl"))
    if name not in shipped:
        raise ConfigError(f"{where}: no bundled dataset '{name}'; bundled: "
                          + ", ".join(BUNDLED + n for n in shipped))
    return DATA_DIR / name


def read_records(path: str | Path, fmt: str, where: str = "task.data") -> list[Record]:
    """Every row of a JSONL file as a checked `Record`, in file order; ids must be unique."""
    if fmt not in READERS:
        raise ConfigError(f"unknown dataset format '{fmt}'; allowed: {', '.join(FORMATS)}")
    path = data_path(path, where)
    if not path.is_file():
        raise ConfigError(f"{where}: dataset file not found: '{path}'")
    records, seen = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise RowError("a row must be a JSON object")
            record = READERS[fmt](row)
            check_record(record)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        except RowError as e:
            raise ConfigError(f"{path}:{lineno}: {e} (format '{fmt}')") from e
        if record.id in seen:
            raise ConfigError(f"{path}:{lineno}: duplicate id '{record.id}' (first on line {seen[record.id]})")
        seen[record.id] = lineno
        records.append(record)
    if not records:
        raise ConfigError(f"{where}: '{path}' holds no questions")
    return records
