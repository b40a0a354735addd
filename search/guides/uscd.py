"""Uncertainty-aware selective contrastive decoding (USCD).

Paper: Wang et al. 2024, *Improving Code Generation of LLMs by Uncertainty-Aware Selective Contrastive
Decoding*: a "lame" prompt — the standard prompt stripped of what makes it informative (in the paper,
a few-shot prompt without its input-output examples) — brings out the model's output noise; that
noise is removed only where the standard prediction is uncertain.

Rule: with z the logits under the standard prompt and z_lame under the lame one, a token is drawn
from (1 + α)·z − α·z_lame where the standard distribution's uncertainty exceeds `threshold`, and from
z elsewhere. Uncertainty here is the normalised entropy H(softmax(z)) / log V in [0, 1] (ponder's
measure: the paper ties output noise to the uncertainty of the standard prompt's token distribution).
The lame prompt is `lame` when given, else the prompt's last `keep_lines` lines (the code being
completed, without the header and examples above it). Both prompts run as rows of one batched forward
(`StreamedModel`), so every decoder and strategy runs on the result.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ponder.errors import ConfigError, check_int, check_number
from ponder.search.guides.streams import StreamedModel

DEFAULT_ALPHA = 0.5
DEFAULT_THRESHOLD = 0.3
DEFAULT_KEEP_LINES = 1


def lame_prompt(prompt: str, keep_lines: int) -> str:
    """The prompt's last `keep_lines` lines (an unfinished last line counts as one)."""
    lines = prompt.splitlines(keepends=True)
    return "".join(lines[-keep_lines:]) if lines else prompt


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of softmax(logits) over the last dim, in [0, 1]. [..., V] -> [...]"""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


def uscd(model, *, lame: str | list | None = None, keep_lines: int = DEFAULT_KEEP_LINES,
         alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD, context=None) -> StreamedModel:
    """`model` guided by USCD (see the module docstring for the rule)."""
    if context is not None:
        raise ConfigError("guide 'uscd' contrasts the prompt with a lame prompt (guide option lame=TEXT, or "
                          "keep_lines=N of the prompt's last lines), not with a context")
    alpha = check_number("alpha", alpha, minimum=0.0)
    threshold = check_number("threshold", threshold, minimum=0.0, maximum=1.0)
    keep_lines = check_int("keep_lines", keep_lines)
    if lame is not None and (not isinstance(lame, (str, list)) or not lame):
        raise ConfigError(f"guide 'uscd': lame must be a non-empty prompt, got {lame!r}")

    def variants(prompt: Any) -> list[list[int]]:
        if lame is not None:
            weak = lame
        elif isinstance(prompt, str):
            weak = lame_prompt(prompt, keep_lines)
        elif isinstance(prompt, list):
            weak = prompt[-keep_lines:]  # a token prompt: its last keep_lines tokens
        else:
            raise ConfigError(f"guide 'uscd' builds its lame prompt from a text or list prompt, got "
                              f"{type(prompt).__name__}; pass lame=...")
        return [model.encode(prompt), model.encode(weak)]

    def combine(logits: torch.Tensor) -> torch.Tensor:  # [2, B, ..., V]
        standard, weak = logits[0], logits[1]
        contrast = (1.0 + alpha) * standard - alpha * weak
        return torch.where((uncertainty(standard) > threshold)[..., None], contrast, standard)

    name = f"uscd({getattr(model, 'name', 'model')}, alpha={alpha:g}, threshold={threshold:g})"
    return StreamedModel(model, variants, combine, streams=2, name=name)


__all__ = ["DEFAULT_ALPHA", "DEFAULT_THRESHOLD", "lame_prompt", "uncertainty", "uscd"]
