"""Dense retrieval: documents and queries as the mean of a local model's final hidden states, ranked
by cosine similarity.

Rule (mean pooling, as sentence encoders such as Reimers & Gurevych 2019, *Sentence-BERT*, pool):
a text's vector is the average over its positions of the model's final hidden state (the first
`context_length` tokens), normalised to unit length; a query's hits are the k documents of highest
dot product with its vector. Any `HiddenStateModel` serves — the zoo LM's own by default, or a model
folder the user brings. The index records the model that built it and refuses another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ponder.errors import ConfigError, InputError
from ponder.search.core.capabilities import HiddenStateModel, display_name
from ponder.search.retrieval.corpus import Document
from ponder.search.retrieval.index import Hit, check_k, read_meta, write_meta


def embed(model, text: str) -> np.ndarray:
    """`text`'s unit vector under `model` (mean-pooled final hidden states)."""
    ids = list(model.encode(text))[: int(model.context_length)]
    if not ids:
        raise InputError("cannot embed an empty text")
    with model.capturing_hidden() as box:
        model.prefill([ids], model.new_cache())
    vector = box["hidden"][0].float().mean(0)  # [H]
    return torch.nn.functional.normalize(vector, dim=0).cpu().numpy()


class DenseRetriever:
    kind = "dense"

    def __init__(self, documents: list[Document], vectors: np.ndarray, model):
        self.documents, self.vectors, self.model = documents, vectors, model

    @classmethod
    def build(cls, documents: list[Document], model, *, progress: bool = False) -> DenseRetriever:
        if not isinstance(model, HiddenStateModel):
            raise ConfigError(f"dense retrieval embeds with a model's hidden states; {display_name(model)} has none")
        if not documents:
            raise InputError("a dense index needs at least one document")
        from tqdm import tqdm

        vectors = np.stack([embed(model, d.text) for d in tqdm(documents, desc="embedding", unit="doc",
                                                                   disable=not progress)])
        return cls(documents, vectors.astype(np.float32), model)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        k = min(check_k(k), len(self.documents))
        scores = self.vectors @ embed(self.model, query)  # [N]
        best = np.argsort(-scores, kind="stable")[:k]
        return [Hit(rank, float(scores[i]), self.documents[int(i)]) for rank, i in enumerate(best)]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        write_meta(folder, self.documents, {"kind": self.kind, "model": str(display_name(self.model))})
        np.save(folder / "vectors.npy", self.vectors)
        return folder

    @classmethod
    def load(cls, folder: str | Path, model) -> DenseRetriever:
        folder, meta, documents = read_meta(folder)
        if model is None or str(display_name(model)) != meta.get("model"):
            raise ConfigError(f"the dense index in {str(folder)!r} was built by {meta.get('model')!r}; load it with "
                              f"that model, not {display_name(model, None)!r}")
        vectors = np.load(folder / "vectors.npy")
        if len(vectors) != len(documents):
            raise InputError(f"the dense index in {str(folder)!r} holds {len(vectors)} vectors for "
                             f"{len(documents)} documents")
        return cls(documents, vectors, model)


__all__ = ["DenseRetriever", "embed"]
