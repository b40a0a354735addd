"""Guided models: ponder's shared machinery for guides. `GuidedModel` carries what every guided model
keeps of its base (tokens, limits, capabilities); `StreamedModel` is the one for guides that contrast
a model's predictions under several prompts (context-aware decoding, contrastive decoding).

A `StreamedModel` is a `SequenceModel` whose every row runs as S prompt variants of the same
request — stream s of B rows sits at rows [s·B, (s+1)·B) of one inner cache of the base model — in
one batched forward; a guide's `combine` turns the S next-token logits of a row into the one
distribution the row samples from. Every stream is fed the same tokens, so the streams of a row stay
aligned: the inner cache is left-padded to the longest variant and every rollback (`truncate`,
`hide`, `select_positions`) and fork (`reorder`) applies to all streams of the rows at once. A
decoder sees an ordinary sequence model; a lossless one stays lossless with respect to the guided
distribution, since verification only ever reads the guided logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ponder.errors import ConfigError
from ponder.search.core.capabilities import (
    AnswerExtractor,
    LengthChecked,
    RowRollbackCache,
    SteppedModel,
    TokenizedModel,
    TreeCache,
)

Combine = Callable[[torch.Tensor], torch.Tensor]  # logits [S, B, ..., V] -> guided logits [B, ..., V]
Variants = Callable[[Any], list[list[int]]]  # prompt -> S token-id lists (stream 0 is what `encode` returns)


class StreamCache:
    """The cache of a `StreamedModel`: one inner cache holding every stream of the same B rows."""

    def __init__(self, inner, streams: int):
        self.inner, self.streams = inner, streams
        self.rows = 0
        if not isinstance(inner, RowRollbackCache):
            self.hide = None  # the base cache cannot roll rows back: neither can this one
        if not isinstance(inner, TreeCache):
            self.select_positions = None

    @property
    def length(self) -> int:
        return self.inner.length

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep / duplicate rows: row j becomes old row index[j], in every stream."""
        self.inner.reorder(torch.cat([index + s * self.rows for s in range(self.streams)]))
        self.rows = int(index.shape[0])

    def hide(self, hidden: torch.Tensor) -> None:  # [B, length] bool
        self.inner.hide(hidden.repeat(self.streams, 1))

    def select_positions(self, start: int, index: torch.Tensor) -> None:  # [B, N]
        self.inner.select_positions(start, index.repeat(self.streams, 1))


class GuidedModel:
    """A sequence model over `base`, under its own `name`: `base`'s tokens, tokenizer, limits and
    capabilities (each blocked when `base` lacks it), and by default its cache and forwards. A guide
    (or a decoder's view of a draft) overrides what it changes: `new_cache`, `prefill`, `forward`."""

    def __init__(self, base, name: str):
        self.base, self.name = base, name
        self.eos_token_ids = base.eos_token_ids
        self.context_length = base.context_length
        if isinstance(base, TokenizedModel):  # the same ids as base: a draft can be checked against it
            self.tokenizer = base.tokenizer
        if not isinstance(base, SteppedModel):
            self.is_step_end = None
        if not isinstance(base, AnswerExtractor):
            self.extract_answer = None
        if not isinstance(base, LengthChecked):
            self.check_length = None

    def encode(self, prompt: Any) -> list[int]:
        return self.base.encode(prompt)

    def decode(self, ids: Sequence[int]) -> Any:
        return self.base.decode(ids)

    def is_step_end(self, ids: Sequence[int]) -> bool:
        return self.base.is_step_end(ids)

    def extract_answer(self, output: Any):
        return self.base.extract_answer(output)

    def check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        self.base.check_length(prompt_len, max_new_tokens)

    def new_cache(self):
        return self.base.new_cache()

    def prefill(self, prompt_ids: Sequence[Sequence[int]], cache) -> torch.Tensor:
        return self.base.prefill(prompt_ids, cache)

    def forward(self, tokens: torch.Tensor, cache, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.forward(tokens, cache, attn_mask)


class StreamedModel(GuidedModel):
    """`base` guided over prompt variants: `variants(prompt)` gives a request's S prompts (stream 0
    is the one `encode` returns and decoders see), `combine` the guided logits (see the module)."""

    def __init__(self, base, variants: Variants, combine: Combine, *, streams: int, name: str):
        super().__init__(base, name)
        self._variants, self._combine, self.streams = variants, combine, streams
        self._known: dict[tuple[int, ...], list[list[int]]] = {}  # stream-0 ids -> every stream's ids
        self._last: list[list[int]] = []  # the variants `encode` gave last (what `check_length` checks)

    # ---- what decoders and strategies read --------------------------------------------------------

    def encode(self, prompt: Any) -> list[int]:
        variants = [list(v) for v in self._variants(prompt)]
        if len(variants) != self.streams:
            raise ConfigError(f"{self.name}: a prompt gave {len(variants)} variants, expected {self.streams}")
        self._known[tuple(variants[0])] = variants
        self._last = variants
        return variants[0]

    def check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        longest = max((len(v) for v in self._last), default=prompt_len)  # every stream must fit
        self.base.check_length(max(prompt_len, longest), max_new_tokens)

    def new_cache(self) -> StreamCache:
        return StreamCache(self.base.new_cache(), self.streams)

    def prefill(self, prompt_ids: Sequence[Sequence[int]], cache: StreamCache) -> torch.Tensor:
        rows = []
        for ids in prompt_ids:
            key = tuple(int(t) for t in ids)
            if key not in self._known:
                raise ConfigError(f"{self.name}: prefill takes prompts from its own encode(); {list(key)[:8]}... "
                                  "was not encoded by this guided model")
            rows.append(self._known[key])
        flat = [rows[b][s] for s in range(self.streams) for b in range(len(rows))]  # stream-major
        cache.rows = len(rows)
        logits = self.base.prefill(flat, cache.inner)  # [S*B, V]
        return self._combine(logits.float().view(self.streams, len(rows), -1))  # [B, V]

    def forward(self, tokens: torch.Tensor, cache: StreamCache, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t = tokens.shape
        mask = None if attn_mask is None else attn_mask.repeat(self.streams, 1, 1)
        logits = self.base.forward(tokens.repeat(self.streams, 1), cache.inner, mask)  # [S*B, T, V]
        return self._combine(logits.float().view(self.streams, b, t, -1))  # [B, T, V]


__all__ = ["Combine", "GuidedModel", "StreamCache", "StreamedModel", "Variants"]
