"""A small deterministic extractive summarizer: the same text always gives the same summary.

Sentences are scored by how often their words occur in the whole text (common English words
left out); the best ones are kept in their original order, within a length budget.
"""

import re
from collections import Counter

STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[a-z0-9']+")


def split_sentences(text: str) -> list[str]:
    text = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def summarize(text: str, max_sentences: int = 2, max_chars: int = 320) -> str:
    """The ``max_sentences`` most representative sentences of ``text``, in order."""
    sentences = split_sentences(text)
    if not sentences:
        return ""
    if len(sentences) <= max_sentences:
        return _truncate(" ".join(sentences), max_chars)
    frequency = Counter(
        word for word in _WORD.findall(text.lower()) if word not in STOP_WORDS and len(word) > 2
    )

    def score(index: int) -> tuple[float, int]:
        words = [w for w in _WORD.findall(sentences[index].lower()) if w in frequency]
        value = sum(frequency[w] for w in words) / (len(words) ** 0.5) if words else 0.0
        return (value + (0.5 if index == 0 else 0.0), -index)  # ties: the earlier sentence

    best = sorted(range(len(sentences)), key=score, reverse=True)[:max_sentences]
    return _truncate(" ".join(sentences[i] for i in sorted(best)), max_chars)


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"
