"""Capabilities: what search may use beyond `SequenceModel` / `SequenceCache` / `Verifier`, by name.

A modality offers a capability by having the members of its protocol; search asks with
``isinstance(x, Protocol)`` and never probes a member by name. Each protocol states what it promises.
A method set to None blocks its protocol (``hide = None``: a cache that cannot roll rows back).

``isinstance`` looks members up as attributes of the object: a proxy that forwards through
``__getattr__`` offers what it forwards on Python 3.11, but from 3.12 on `runtime_checkable` looks
members up statically, so a proxy that wants a capability there must define its members itself.

`MaskedModel` is the model protocol of masked generative decoding (MaskGCT-style); its decoders share
the `MaskedDecoder` signature instead of the sequence decoders' one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ponder.search.core import Named

if TYPE_CHECKING:
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.core import Decoded

__all__ = [
    "AnswerExtractor",
    "HiddenStateDraft",
    "HiddenStateModel",
    "JoinableCache",
    "LayerSkippingModel",
    "LengthChecked",
    "MaskedDecoder",
    "MaskedModel",
    "MedusaDraft",
    "OnDevice",
    "OutputEncoder",
    "PaddedModel",
    "RecyclingModel",
    "RowImageModel",
    "RowRollbackCache",
    "SharedPrefixCache",
    "SteppedModel",
    "TokenizedModel",
    "TreeCache",
    "VerifiedHook",
    "Vocabulary",
    "device_of",
    "display_name",
]


# ---- names and placement --------------------------------------------------------------------------


def display_name(obj: Any, default: Any = "model") -> Any:
    """`obj.name` when `obj` is `Named` (the core protocol), else `default`: the one way search names
    what it was given in configs and error messages."""
    return obj.name if isinstance(obj, Named) else default


@runtime_checkable
class OnDevice(Protocol):
    """Wants its input tensors on `device` (a model on a GPU); without it inputs stay where they are."""

    device: torch.device


def device_of(model: Any) -> torch.device | None:
    """The device `model`'s inputs go to, or None (leave them where they are)."""
    return model.device if isinstance(model, OnDevice) else None


# ---- sequence models ------------------------------------------------------------------------------


@runtime_checkable
class Vocabulary(Protocol):
    """A tokenizer that lists its vocabulary (token -> id); equal vocabularies mean equal ids."""

    def get_vocab(self) -> dict[str, int]: ...


@runtime_checkable
class TokenizedModel(Protocol):
    """Carries the tokenizer behind its ids, so a target and a draft can be checked to share ids."""

    tokenizer: Any


@runtime_checkable
class PaddedModel(Protocol):
    """Names the id it pads rows with (a row's pads are never read as its tokens)."""

    pad_token_id: int


@runtime_checkable
class LengthChecked(Protocol):
    """Refuses, before any decoding, a prompt + budget longer than its context (an InputError)."""

    def check_length(self, prompt_len: int, max_new_tokens: int) -> None: ...


@runtime_checkable
class RecyclingModel(Protocol):
    """Runs Recycled Attention inside `recycling(stride=, top_k=)`: full attention every `stride`
    forwards, in between only the `top_k` positions the last full step attended most (lossy); the
    first `dense_layers` layers always attend in full."""

    def recycling(self, *, stride: int, top_k: int, dense_layers: int = 0) -> AbstractContextManager: ...


@runtime_checkable
class SteppedModel(Protocol):
    """Divides an output into steps (what a process verifier scores): is the step made of `ids` over?"""

    def is_step_end(self, ids: Sequence[int]) -> bool: ...


@runtime_checkable
class AnswerExtractor(Protocol):
    """Reads the final answer from an output (None when it states none), for voting strategies."""

    def extract_answer(self, output: Any) -> Any: ...


@runtime_checkable
class OutputEncoder(Protocol):
    """Encodes an output as the exact token ids it continues `prompt` with (no re-tokenising guesswork)."""

    def encode_output(self, prompt: Any, output: Any) -> list[int]: ...


@runtime_checkable
class RowImageModel(Protocol):
    """Emits an image as rows of `row_tokens` tokens (Jacobi's "horizon" guess copies the row above)."""

    row_tokens: int


@runtime_checkable
class LayerSkippingModel(Protocol):
    """Runs forwards with some of its `num_layers` decoder layers skipped inside `skipping_layers(skip)`;
    the kept layers read and write their own cache layers (self-speculative drafting)."""

    num_layers: int

    def skipping_layers(self, skip: Sequence[int]) -> AbstractContextManager[None]: ...


@runtime_checkable
class HiddenStateModel(Protocol):
    """Inside `capturing_hidden()`, every prefill / forward leaves the final hidden states [B, T, H]
    (what the LM head reads) in the yielded dict under "hidden"."""

    def capturing_hidden(self) -> AbstractContextManager[dict]: ...


@runtime_checkable
class MedusaDraft(Protocol):
    """Medusa heads: `num_heads` heads read a target hidden state [B, hidden_size] and give logits
    [B, num_heads, V] for the next `num_heads` tokens after the one that state produced."""

    num_heads: int
    hidden_size: int

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HiddenStateDraft(Protocol):
    """An autoregressive draft over a target's final hidden states (EAGLE / Chimera style).

    Per row it keeps the pairs fed so far, (h_j, x_{j+1}): the target's hidden state [hidden_size] at
    position j and the token after it. `begin(first_tokens)` opens a cache for B rows (row r's token
    x_0); `extend(state, hidden [B, W, H], next_tokens [B, W], counts)` appends row r's first
    counts[r] pairs and returns (logits [B, V] for the token after the last next token, predicted
    hidden state [B, H] to feed back with it); `rollback(state, lengths)` keeps row r's first
    lengths[r] pairs."""

    hidden_size: int

    def begin(self, first_tokens: list[int]) -> Any: ...

    def extend(self, state: Any, hidden: torch.Tensor, next_tokens: torch.Tensor,
               counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def rollback(self, state: Any, lengths: list[int]) -> None: ...


# ---- caches ---------------------------------------------------------------------------------------


@runtime_checkable
class RowRollbackCache(Protocol):
    """Rolls rows back one by one: `hide(mask [B, L])` takes the masked positions out of those rows for
    good (never attended to, not counted in later positions), so rows of one batch may keep different
    numbers of draft tokens."""

    def hide(self, hidden: torch.Tensor) -> None: ...


@runtime_checkable
class SharedPrefixCache(Protocol):
    """Keeps one copy of a prompt for many rows: `share_prefix(n)` turns the one prefilled row into a
    prefix that n rows read (cascade attention), so candidates of one prompt fork without copying it."""

    def share_prefix(self, rows: int) -> None: ...


@runtime_checkable
class JoinableCache(Protocol):
    """A cache rows can join and leave while it decodes (continuous batching): `join(other, index)`
    appends other's rows right-aligned (the shorter side left-padded and hidden), `reorder(index)`
    keeps / drops rows, `leading_padding()` counts the leading positions no row attends to and
    `drop_leading(n)` forgets them. A joined row's logits equal its logits alone up to float
    rounding (the padding changes the attention's reduction length)."""

    def join(self, other: Any, index: torch.Tensor | None = None) -> None: ...
    def reorder(self, index: torch.Tensor) -> None: ...
    def leading_padding(self) -> int: ...
    def drop_leading(self, count: int) -> None: ...


@runtime_checkable
class TreeCache(Protocol):
    """Keeps a verified tree's accepted path: `select_positions(start, index [B, N])` moves row b's
    position start + index[b, j] to start + j (their keys were computed with the path's positions)."""

    def select_positions(self, start: int, index: torch.Tensor) -> None: ...


# ---- proposers ------------------------------------------------------------------------------------


@runtime_checkable
class VerifiedHook(Protocol):
    """A draft proposer that reads each verify pass's logits [B, W, V] (before `accepted`): Jacobi
    windows, lookahead and Token Recycling draft from what the target computed at every position."""

    def verified(self, logits: torch.Tensor) -> None: ...


# ---- masked generative models (MaskGCT-style) -----------------------------------------------------


@runtime_checkable
class MaskedModel(Protocol):
    """Predicts every masked position of a partially masked sequence at once, given its conditioning.

    A sequence is L ids; masked positions hold `mask_token_id`. `masked_logits` returns logits for
    every position (the decoder reads the masked ones); `cond` is what `condition(prompt)` returned,
    shared by every row (candidates of one prompt). Rows are independent and the call keeps no state,
    so a decoder may call it as often as its schedule needs.
    """

    mask_token_id: int

    def condition(self, prompt: Any) -> Any: ...  # prompt -> conditioning (text, reference audio, ...)

    def masked_logits(self, tokens: torch.Tensor, mask: torch.Tensor, cond: Any) -> torch.Tensor:
        """tokens: LongTensor [B, L]; mask: BoolTensor [B, L] (True = masked) -> logits [B, L, V]."""
        ...

    def decode(self, ids: Sequence[int]) -> Any: ...  # L ids -> output (audio, image, ...)


class MaskedDecoder(Protocol):
    """The signature every masked-model decoder shares (the sequence decoders' is in `ponder.search.decoding`).

    ``decoder(model, cond, *, length, steps, sampling, generators, **options) -> Decoded``: start from
    `length` masked positions per row, call `model.masked_logits` once per step (`steps` in all), fix
    some positions each step (which, and how many, is the decoder's rule, e.g. MaskGCT's cosine
    schedule of the most confident ones) and return every row's `length` ids; row r draws only from
    generators[r]. `Decoded.compute.model_calls` counts `masked_logits` calls.
    """

    def __call__(self, model: MaskedModel, cond: Any, *, length: int, steps: int, sampling: SamplingParams,
                 generators: list[torch.Generator] | None, **options: Any) -> Decoded: ...
