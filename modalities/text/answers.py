"""Final-answer extraction from free text, for voting strategies (self-consistency, RPC, weighted
best-of-N) on any text model.

Rule, first match wins: the last ``\\boxed{...}``; the last ``A:`` / ``Answer:`` / ``answer is`` /
``####`` line's value (its leading number when it starts with one); else the last number in the
text. Numbers are normalised (``1,000`` and ``1000.0`` are the same answer ``1000``); anything else
is compared as stripped text. None when the text holds no candidate answer.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_MARKED = re.compile(r"(?:^|\n)\s*(?:A|Answer|Final answer)\s*:\s*([^\n]+)|(?:answer is|####)\s*:?\s*([^\n]+)",
                     re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _normalise(value: str) -> str | None:
    value = value.strip().rstrip(".").strip()
    if not value:
        return None
    number = _NUMBER.fullmatch(value.replace(" ", ""))
    if number:
        text = number.group(0).replace(",", "")
        as_float = float(text)
        return str(int(as_float)) if as_float.is_integer() else repr(as_float)
    return value


def extract_answer(text: str) -> str | None:
    """The final answer stated in `text`, normalised; None when there is none."""
    if not isinstance(text, str) or not text:
        return None
    boxed = _BOXED.findall(text)
    if boxed:
        return _normalise(boxed[-1])
    marked = _MARKED.findall(text)
    if marked:
        value = next(v for v in marked[-1] if v).strip()
        number = _NUMBER.match(value)  # "114", "114 apples", "1,000." -> the leading number
        return _normalise(number.group(0) if number else value)
    numbers = _NUMBER.findall(text)
    return _normalise(numbers[-1]) if numbers else None
