"""What task data is read into: :class:`Example` (a text or a pair, with an optional label)
and :class:`SquadRecord` (a question with its context and gold answers)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Example", "SquadRecord"]


@dataclass(frozen=True)
class Example:
    """One input to the model: a text or a text pair, with an optional label."""

    text: str
    """The first (or only) segment."""
    text_pair: str | None = None
    """The second segment of a pair task (hypothesis, second sentence, SQuAD context)."""
    label: int | float | None = None
    """Class index (classification), score (regression) or ``None`` when the data has none."""


@dataclass(frozen=True)
class SquadRecord:
    """One SQuAD question with its context and every gold answer."""

    id: str
    """The question id, unique in the file."""
    title: str
    """The article title."""
    question: str
    """The question."""
    context: str
    """The paragraph the answer is taken from."""
    answer_texts: tuple[str, ...]
    """Gold answers (SQuAD dev has up to several per question; EM/F1 take the best match)."""
    answer_starts: tuple[int, ...]
    """Character offset of each gold answer in ``context``."""

    @property
    def answer_text(self) -> str:
        """The first gold answer ("" when the question has none)."""
        return self.answer_texts[0] if self.answer_texts else ""

    @property
    def answer_start(self) -> int:
        """Character offset of the first gold answer (-1 when the question has none)."""
        return self.answer_starts[0] if self.answer_starts else -1
