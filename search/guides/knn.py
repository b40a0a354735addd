"""kNN-LM: interpolate the model with a nearest-neighbour memory of a corpus.

Papers: Khandelwal et al. 2020, *Generalization through Memorization: Nearest Neighbor Language
Models*; Wang et al. 2023, *KNN-LM Does Not Improve Open-ended Text Generation* (why the interpolation
helps recall of what the datastore holds, not open-ended quality).

Rule: the datastore maps every position of a corpus to (the model's final hidden state there, the
token that follows). At each step, the k keys nearest (squared L2 distance d) to the current hidden
state vote for their tokens with weights softmax(−d / temperature), giving p_kNN; the token is drawn
from p = λ·p_kNN + (1 − λ)·p_LM. Documents added to the datastore become usable without retraining.
The nearest-neighbour search is scikit-learn's (`NearestNeighbors`). Build a datastore with
`Datastore.build(model, texts)` (and `save` it), or pass the guide a corpus to build one in memory;
ponder never ships one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ponder.errors import ConfigError, InputError, check_int, check_number
from ponder.search.core.capabilities import HiddenStateModel, display_name
from ponder.search.guides.streams import GuidedModel

DEFAULT_K = 16
DEFAULT_LAMBDA = 0.25
DEFAULT_TEMPERATURE = 1.0


@dataclass
class Datastore:
    """(key [N, D] float32, value [N] int64) pairs and the model that built them."""

    keys: np.ndarray
    values: np.ndarray
    model: str

    def __post_init__(self):
        from sklearn.neighbors import NearestNeighbors

        if self.keys.ndim != 2 or len(self.keys) != len(self.values) or not len(self.keys):
            raise InputError(f"a datastore needs N > 0 keys [N, D] and N values, got {self.keys.shape} and "
                             f"{self.values.shape}")
        self._index = NearestNeighbors().fit(self.keys)

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def build(cls, model, texts: list[str], *, progress: bool = False) -> Datastore:
        """Run `model` over every text (in windows of its context length) and keep each position's
        final hidden state with the token after it; a document's last token is followed by the
        model's end-of-sequence token (documents end)."""
        if not isinstance(model, HiddenStateModel):
            raise ConfigError(f"kNN-LM reads the model's hidden states; {display_name(model)} does not offer them")
        from tqdm import tqdm

        keys, values = [], []
        window = max(2, int(model.context_length))
        eos = sorted(model.eos_token_ids)[:1]
        for text in tqdm(texts, desc="kNN-LM datastore", unit="doc", disable=not progress):
            ids = list(model.encode(text)) + eos
            for start in range(0, max(1, len(ids) - 1), window - 1):
                chunk = ids[start:start + window]
                if len(chunk) < 2:
                    continue
                with model.capturing_hidden() as box:
                    model.prefill([chunk], model.new_cache())
                keys.append(box["hidden"][0, :-1].float().cpu().numpy())
                values.append(np.asarray(chunk[1:], dtype=np.int64))
        if not keys:
            raise InputError("the corpus gave no positions for a datastore (every document is shorter than 2 tokens)")
        return cls(np.concatenate(keys).astype(np.float32), np.concatenate(values), str(display_name(model)))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        np.savez(path, keys=self.keys, values=self.values, meta=np.asarray(json.dumps({"model": self.model})))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Datastore:
        path = Path(path).expanduser()
        try:
            data = np.load(path, allow_pickle=False)
            meta = json.loads(str(data["meta"]))
            return cls(data["keys"].astype(np.float32), data["values"].astype(np.int64), meta["model"])
        except (OSError, KeyError, ValueError) as err:
            raise InputError(f"{str(path)!r} is not a ponder kNN-LM datastore (.npz from Datastore.save): {err}") \
                from None

    def probabilities(self, queries: torch.Tensor, vocab: int, k: int, temperature: float) -> torch.Tensor:
        """p_kNN [Q, V] for hidden states `queries` [Q, D]."""
        k = min(k, len(self))
        distances, index = self._index.kneighbors(queries.float().cpu().numpy(), n_neighbors=k)  # [Q, k] each
        d = torch.from_numpy(distances).float() ** 2  # squared L2, as the paper
        weights = torch.softmax(-d / temperature, dim=-1)  # [Q, k]
        tokens = torch.from_numpy(self.values[index])  # [Q, k]
        if int(tokens.max()) >= vocab:
            raise ConfigError(f"the datastore holds token {int(tokens.max())}, beyond this model's {vocab} tokens; "
                              f"it was built by {self.model!r}")
        return torch.zeros((len(index), vocab)).scatter_add_(1, tokens, weights)  # [Q, V]


class KnnModel(GuidedModel):
    """`base` interpolated with a datastore (see the module docstring for the rule)."""

    def __init__(self, base, store: Datastore, *, k: int, lam: float, temperature: float):
        super().__init__(base, f"knn({display_name(base)}, k={k}, lambda={lam:g})")
        self.store, self.k, self.lam, self.temperature = store, k, lam, temperature

    def _guided(self, logits: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """log(λ·p_kNN + (1 − λ)·p_LM) for logits [Q, V] and hidden states [Q, D]."""
        p_lm = torch.softmax(logits.float(), dim=-1)
        if self.lam == 0.0:
            return torch.log(p_lm)
        p_knn = self.store.probabilities(hidden, logits.shape[-1], self.k, self.temperature).to(p_lm.device)
        return torch.log(self.lam * p_knn + (1.0 - self.lam) * p_lm)

    def prefill(self, prompt_ids, cache) -> torch.Tensor:
        with self.base.capturing_hidden() as box:
            logits = self.base.prefill(prompt_ids, cache)  # [B, V]
        return self._guided(logits, box["hidden"][:, -1])

    def forward(self, tokens: torch.Tensor, cache, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        with self.base.capturing_hidden() as box:
            logits = self.base.forward(tokens, cache, attn_mask)  # [B, T, V]
        b, t, v = logits.shape
        return self._guided(logits.reshape(b * t, v), box["hidden"].reshape(b * t, -1)).view(b, t, v)


def knn(model, *, datastore: str | Datastore | None = None, corpus: str | list | None = None, k: int = DEFAULT_K,
        lam: float = DEFAULT_LAMBDA, temperature: float = DEFAULT_TEMPERATURE, context: Any = None) -> KnnModel:
    """`model` interpolated with a kNN datastore: `datastore` (a `Datastore`, or the .npz `save` wrote)
    or `corpus` (a folder / JSONL in `ponder.search.retrieval.corpus` form, or a list of texts, built
    into a datastore now)."""
    if context is not None:
        raise ConfigError("guide 'knn' retrieves from a datastore (guide option datastore=FILE or corpus=PATH), "
                          "not from a context")
    if (datastore is None) == (corpus is None):
        raise ConfigError("guide 'knn' needs exactly one of datastore=FILE.npz (Datastore.save) or corpus=PATH "
                          "(a folder of .txt / .md files or a JSONL of {id, text})")
    k = check_int("k", k)
    lam = check_number("lam", lam, minimum=0.0, maximum=1.0, what="the datastore's weight")
    temperature = check_number("temperature", temperature, minimum=0.0, open_min=True)
    if not isinstance(model, HiddenStateModel):
        raise ConfigError(f"kNN-LM reads the model's hidden states; {display_name(model)} does not offer them")
    if isinstance(datastore, Datastore):
        store = datastore
    elif datastore is not None:
        store = Datastore.load(datastore)
    else:
        from ponder.search.retrieval import read_corpus

        texts = corpus if isinstance(corpus, list) else [d.text for d in read_corpus(corpus)]
        store = Datastore.build(model, texts)
    return KnnModel(model, store, k=k, lam=lam, temperature=temperature)


__all__ = ["Datastore", "KnnModel", "knn"]
