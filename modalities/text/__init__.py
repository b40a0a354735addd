"""Text: a `SequenceModel` over any Hugging Face causal LM, text verifiers, and the `arith` zoo."""

from __future__ import annotations

from ponder.modalities.text.model import TextModel

__all__ = ["TextModel", "load"]


def load(folder, **options):
    """Load a causal LM + tokenizer from a local folder (see `TextModel.from_folder`), or Medusa heads
    (a folder whose config.json names ``MedusaHeads``; see `ponder.modalities.text.medusa`)."""
    from ponder.modalities.text.medusa import MedusaHeads, read_config

    if read_config(folder) is not None:
        return MedusaHeads.from_folder(folder, name=options.get("name"))
    return TextModel.from_folder(folder, **options)
