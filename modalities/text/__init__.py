"""Text: a `SequenceModel` over any Hugging Face causal LM, text verifiers, and the `arith` zoo."""

from __future__ import annotations

from ponder.modalities.text.model import TextModel

__all__ = ["TextModel", "load"]


def load(folder, **options) -> TextModel:
    """Load a causal LM + tokenizer from a local folder (see `TextModel.from_folder`)."""
    return TextModel.from_folder(folder, **options)
