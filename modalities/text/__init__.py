"""Text: a `SequenceModel` over any Hugging Face causal LM, text verifiers, and the `arith` zoo.

The registry entry is `ponder.modalities.text.spec.SPEC`; `TextModel` loads on first use.
"""

from __future__ import annotations

__all__ = ["TextModel", "load"]


def load(folder, **options):
    """Load a causal LM + tokenizer from a local folder (see `TextModel.from_folder`), Medusa heads
    (a folder whose config.json names ``MedusaHeads``; see `ponder.modalities.text.medusa`) or a Chimera
    draft (``ChimeraDraft``; see `ponder.modalities.text.chimera`)."""
    from ponder.modalities.text import chimera
    from ponder.modalities.text.medusa import MedusaHeads, read_config
    from ponder.modalities.text.model import TextModel

    if read_config(folder) is not None:
        return MedusaHeads.from_folder(folder, name=options.get("name"))
    if chimera.read_config(folder) is not None:
        return chimera.ChimeraDraft.from_folder(folder, name=options.get("name"))
    model = TextModel.from_folder(folder, **options)
    if "stdlib" in model.card:  # a pycode card: its figures hold for the file set it was measured on
        from ponder.modalities.text.pycode import warn_if_data_changed

        warn_if_data_changed(model.card)
    return model


def __getattr__(name: str):
    if name == "TextModel":
        from ponder.modalities.text.model import TextModel

        return TextModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
