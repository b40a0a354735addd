"""The zoo registry: tiny models ponder trains itself, shipped as safetensors with a card.

`zoo:NAME` anywhere a model is asked for resolves here. Each entry names its modality, its kind
(model, draft, verifier), the folder its weights ship in, and the recipe that rebuilds them
(`ponder zoo train NAME`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ponder.errors import ZooError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    modality: str  # "text", ...
    kind: str  # "model" | "draft" | "verifier"
    summary: str
    # module whose `train(name, out_dir, log=, steps=, smoke=) -> card` rebuilds the weights
    recipe: str = "ponder.modalities.text.train"

    @property
    def folder(self) -> Path:
        """Where the shipped weights live (inside the installed package)."""
        import ponder.modalities

        return Path(ponder.modalities.__file__).parent / self.modality / "zoo" / self.name

    @property
    def built(self) -> bool:
        # transformers folders have a root config.json, diffusers pipeline folders a model_index.json
        return (self.folder / "config.json").is_file() or (self.folder / "model_index.json").is_file()

    def card(self) -> dict:
        path = self.folder / "card.json"
        return json.loads(path.read_text()) if path.is_file() else {}


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("arith", "text", "model", "LlamaForCausalLM (~14 M) solving multi-step arithmetic step by step"),
        ZooEntry("arith-draft", "text", "draft", "one-layer Llama distilled from arith, for speculative decoding"),
        ZooEntry("arith-medusa", "text", "draft", "4 Medusa heads on the frozen arith target (--decoder medusa)",
                 recipe="ponder.modalities.text.train_medusa"),
        ZooEntry("orm", "text", "verifier", "outcome verifier for arith: P(final answer correct)"),
        ZooEntry("prm", "text", "verifier", "process verifier for arith: P(step correct), every step"),
        ZooEntry("exact", "text", "verifier", "exact checker for arith: 1 if the answer is right (no weights)"),
        ZooEntry("digits", "image", "model", "class-conditional UNet2DModel + DDIM (diffusers folder) on 16x16 digits",
                 recipe="ponder.modalities.image.train"),
        ZooEntry("digits-classifier", "image", "verifier", "ViTForImageClassification on digits: the search verifier",
                 recipe="ponder.modalities.image.train"),
        ZooEntry("digits-judge", "image", "verifier", "ResNetForImageClassification on disjoint digits: bench judge "
                 "only, never used by search", recipe="ponder.modalities.image.train"),
        ZooEntry("digits-ar", "image", "model", "LlamaForCausalLM over a k-means codebook of 2x2 digit patches "
                 "(64 tokens per 16x16 image), class token as prompt", recipe="ponder.modalities.image.train_ar"),
    ]
}


def entry(name: str) -> ZooEntry:
    """The zoo entry called `name` (with or without the ``zoo:`` prefix)."""
    key = name.removeprefix("zoo:")
    if key not in ZOO:
        raise ZooError(f"unknown zoo name {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
    return ZOO[key]


def folder(name: str) -> Path:
    """The weights folder of a zoo model, checked to be built."""
    e = entry(name)
    if e.name == "exact":
        raise ZooError("zoo:exact is a rule, not a model; use it as --verifier exact")
    if not e.built:
        raise ZooError(f"zoo model {e.name!r} has no weights at {e.folder}; build them with "
                       f"`ponder zoo train {e.name}`")
    return e.folder


def train(name: str, log=print, steps: int | None = None, out_dir: Path | None = None,
          smoke: bool = False) -> dict:
    """Run the recipe of zoo model `name`; returns its card.

    out_dir: the zoo folder of the modality to write into (default: the shipped one).
    steps: override the recipe's step count.
    smoke: a tiny model and few evaluation problems: the recipe end to end in seconds.
    """
    e = entry(name)
    if e.name == "exact":
        raise ZooError("zoo:exact is a rule with nothing to train")
    import importlib

    recipes = importlib.import_module(e.recipe)
    return recipes.train(e.name, out_dir or e.folder.parent, log=log, steps=steps, smoke=smoke)
