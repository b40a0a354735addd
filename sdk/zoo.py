"""The zoo: tiny models ponder trains itself, shipped as safetensors with a card.

`zoo:NAME` anywhere a model is asked for resolves here. Each modality lists the zoo entries it ships
in its registry spec (`ponder.modalities.registry.ModalitySpec.zoo`): the modality, the kind (model,
draft, verifier), the folder its weights ship in, and the recipe that rebuilds them
(`ponder zoo train NAME`).
"""

from __future__ import annotations

from pathlib import Path

from ponder.errors import ZooError
from ponder.modalities.registry import ZooEntry, zoo_entries

__all__ = ["ZooEntry", "entry", "folder", "train"]  # and ZOO, read from the registry on use


def __getattr__(name: str):
    if name == "ZOO":  # read from the registry on use, so a plug-in's zoo shows up too
        return zoo_entries()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def entry(name: str) -> ZooEntry:
    """The zoo entry called `name` (with or without the ``zoo:`` prefix)."""
    table = zoo_entries()
    key = str(name).removeprefix("zoo:")
    if key not in table:
        raise ZooError(f"unknown zoo name {name!r}; the zoo has: {', '.join(sorted(table))}")
    return table[key]


def folder(name: str) -> Path:
    """The weights folder of a zoo model, checked to be built."""
    return entry(name).weights()


def train(name: str, log=print, steps: int | None = None, out_dir: Path | None = None,
          smoke: bool = False) -> dict:
    """Run the recipe of zoo model `name`; returns its card.

    out_dir: the zoo folder of the modality to write into (default: the shipped one).
    steps: override the recipe's step count.
    smoke: a tiny model and few evaluation problems: the recipe end to end in seconds.
    """
    e = entry(name)
    if e.recipe is None:
        raise ZooError(f"zoo:{e.name} is a rule with nothing to train")
    import importlib

    recipes = importlib.import_module(e.recipe)
    return recipes.train(e.name, out_dir or e.folder.parent, log=log, steps=steps, smoke=smoke)
