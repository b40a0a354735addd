"""Context-aware decoding (CAD).

Paper: Shi et al. 2023, *Trusting Your Evidence: Hallucinate Less with Context-aware Decoding*
(and *Context-aware Decoding Reduces Hallucination in Query-focused Summarization*).

Rule: sample each token from softmax((1 + α)·z(y | c, x) − α·z(y | x)), where z are the model's
logits with the context c before the prompt x and without it: the model's own prior, which ignores
the context, is subtracted, so what the context says outweighs what the model memorised. α = 0 is
plain decoding with the context; the paper uses α = 0.5 (summaries) and α = 1 (knowledge conflicts).
Both streams run as rows of one batched forward (`StreamedModel`); temperature and top-k / top-p
apply to the guided logits.
"""

from __future__ import annotations

from typing import Any

import torch

from ponder.errors import ConfigError, check_number
from ponder.search.guides.streams import StreamedModel

DEFAULT_ALPHA = 0.5


def cad(model, *, context: str | list | None = None, alpha: float = DEFAULT_ALPHA) -> StreamedModel:
    """`model` guided by context-aware decoding with `context`, put right before each prompt: text
    for a text prompt (end it with the separator the prompts expect, e.g. a newline), or a list for
    a model whose prompts are lists (token ids)."""
    if not isinstance(context, (str, list)) or not context:
        raise ConfigError("guide 'cad' contrasts the model with and without a context: pass context=TEXT "
                          "(--context TEXT or --context @FILE)")
    alpha = check_number("alpha", alpha, minimum=0.0)

    def variants(prompt: Any) -> list[list[int]]:
        if type(prompt) is not type(context):
            raise ConfigError(f"guide 'cad' puts its {type(context).__name__} context before the prompt, which "
                              f"must be one too, got {type(prompt).__name__}")
        return [model.encode(context + prompt), model.encode(prompt)]

    def combine(logits: torch.Tensor) -> torch.Tensor:  # [2, B, ..., V]
        return (1.0 + alpha) * logits[0] - alpha * logits[1]

    name = f"cad({getattr(model, 'name', 'model')}, alpha={alpha:g})"
    return StreamedModel(model, variants, combine, streams=2, name=name)


__all__ = ["DEFAULT_ALPHA", "cad"]
