"""Science multiple-choice QA on text: records from local JSONL files, chat-templated prompts with a
demonstration slot for the teacher, answer extraction and a verifier. Registers the `sciqa` task."""

from mitigate.tasks.sciqa.answers import extract_choice
from mitigate.tasks.sciqa.records import FORMATS, Record, read_records
from mitigate.tasks.sciqa.task import QAPrompt, SciQAParams, SciQATask

__all__ = ["FORMATS", "QAPrompt", "Record", "SciQAParams", "SciQATask", "extract_choice", "read_records"]
