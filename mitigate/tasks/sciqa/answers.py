"""Which option a generated answer commits to.

    extract_choice(text, options) -> option index, or -1 (no answer, ambiguous, or not an option)

Rules, tried in order; the first whose *form* appears in the text decides, even when its content is
malformed (a model that wrote `<answer></answer>` gave no answer; we do not go looking for a
stray letter elsewhere in its reasoning):

1. the last `<answer>...</answer>` tag;
2. the last `\\boxed{...}` (also `\\boxed{\\text{B}}`);
3. the last phrase "answer is X", "answer: X", "correct option/choice is X" (X an uppercase letter,
   optionally in parentheses or bold);
4. the last non-empty line, when it is only a letter: "B", "(B)", "B.", "B)", "**B**".

The content of a tag or box is read leniently: one letter in either case with optional
parentheses and trailing punctuation, a letter followed by ")", "." or ":" and the option's text
("B) mitochondrion"), or exactly one option's text. "B or C" is ambiguous and gives -1; a letter
beyond the number of options gives -1.
"""

from __future__ import annotations

import re

from mitigate.tasks.sciqa.records import LETTERS

TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
PHRASE = re.compile(r"(?i:\banswer\s*(?:is\s*)?[:=]?|\bcorrect\s+(?:option|choice)\s+is\s*:?)\s*"
                    r"\**\(?([A-Z])\)?\**(?![A-Za-z0-9])")
LAST_LINE = re.compile(r"^\**\(?([A-Z])\)?[.:)]?\**$")
LONE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:]?$")
LETTER_THEN_TEXT = re.compile(r"^\(?([A-Za-z])[).:]\s+\S")
WRAPPERS = re.compile(r"\\text(?:bf)?\{([^{}]*)\}|\*\*|\$")


def _index(letter: str, n_options: int) -> int:
    i = LETTERS.find(letter.upper())
    return i if 0 <= i < n_options else -1


def _normalise(text: str) -> str:
    return re.sub(r"[\s.]+$", "", re.sub(r"\s+", " ", text.strip().lower()))


def read_content(content: str, options: tuple[str, ...] | list[str]) -> int:
    """The option named by the inside of a tag or box (see the module docstring), or -1."""
    content = WRAPPERS.sub(lambda m: m.group(1) or "", content).strip()
    if not content:
        return -1
    for pattern in (LONE_LETTER, LETTER_THEN_TEXT):
        m = pattern.match(content)
        if m:
            return _index(m.group(1), len(options))
    by_text = [i for i, o in enumerate(options) if _normalise(o) == _normalise(content)]
    return by_text[0] if len(by_text) == 1 else -1


def extract_choice(text: str, options: tuple[str, ...] | list[str]) -> int:
    """Index into `options` of the answer `text` commits to, or -1 (rules in the module docstring)."""
    tags = TAG.findall(text)
    if tags:
        return read_content(tags[-1], options)
    boxes = BOXED.findall(text)
    if boxes:
        return read_content(boxes[-1], options)
    phrases = PHRASE.findall(text)
    if phrases:
        return _index(phrases[-1], len(options))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        m = LAST_LINE.match(lines[-1])
        if m:
            return _index(m.group(1), len(options))
    return -1
