"""Token sampling over next-token logits [B, V]: temperature, top-k, top-p, min-p and reproducible draws.

Filters work in log space and mark removed tokens with -inf, so they compose in any order and the
result can go straight into ``softmax``. Every filter accepts either one Python scalar for the
whole batch or a per-row tensor [B], so a batch can mix requests with different settings.

Reproducibility contract: :func:`sample` draws exactly one uniform per row from that row's own
generator, so a row's token depends only on its probabilities and its generator — never on the
batch size or on the other rows. :func:`make_generators` derives those generators from a base seed
and a candidate index, so candidate ``i`` of seed ``s`` replays identically in any batch.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Param = float | int | Tensor
"""A sampling parameter: one Python scalar for the whole batch, or a tensor [B] (one per row)."""


def _per_row(param: Param, logits: Tensor, name: str, dtype: torch.dtype) -> Tensor:
    """Turn a scalar or [B] parameter into a column [B, 1] (or [1, 1]) that broadcasts over V."""
    values = torch.as_tensor(param, dtype=dtype, device=logits.device)
    if values.dim() == 0:
        return values.reshape(1, 1)  # [1, 1]
    if values.dim() != 1 or values.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{name} must be a scalar or a tensor [B={logits.shape[0]}], got shape {tuple(values.shape)}"
        )
    return values.unsqueeze(1)  # [B, 1]


def _is_integer(value: object) -> bool:
    """True for ints and int-likes (numpy integers), False for bools, floats and everything else."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")


def apply_temperature(logits: Tensor, temperature: Param) -> Tensor:
    """Divide logits by a temperature; temperature 0 keeps only the argmax (its limit).

    Args:
        logits: [B, V] next-token logits.
        temperature: scalar >= 0 or a tensor [B] of per-row temperatures (values >= 0 are
            trusted, not checked, to avoid a device sync). A row with temperature 0 becomes
            "argmax only": the first maximal logit is kept as is and every other entry is -inf,
            so sampling that row is deterministic.

    Returns:
        New logits [B, V] (the input itself when the scalar temperature is 1).

    Raises:
        ValueError: on a negative or non-finite scalar temperature, or a badly shaped tensor.
    """
    _check_logits(logits)
    if not isinstance(temperature, Tensor):
        if not (0.0 <= temperature < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if temperature == 1.0:
            return logits
    temperatures = _per_row(temperature, logits, "temperature", logits.dtype)  # [B or 1, 1]
    if not isinstance(temperature, Tensor) and temperature > 0:  # one positive scalar: no greedy rows
        return logits / temperatures  # [B, V]
    is_greedy_row = temperatures == 0  # [B or 1, 1]
    # Dividing by 1 on greedy rows keeps the division finite; their result is replaced below.
    scaled = logits / torch.where(is_greedy_row, torch.ones_like(temperatures), temperatures)  # [B, V]
    argmax = logits.argmax(dim=-1, keepdim=True)  # [B, 1]
    is_argmax = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, argmax, True)  # [B, V]
    argmax_only = logits.masked_fill(~is_argmax, -math.inf)  # [B, V]
    return torch.where(is_greedy_row, argmax_only, scaled)  # [B, V]


def top_k_filter(logits: Tensor, k: int | Tensor) -> Tensor:
    """Keep the k highest logits per row; set the rest to -inf.

    Entries tied with the k-th largest value are all kept, so the kept set never depends on how
    ties happen to be ordered (a row may then keep slightly more than k tokens).

    Args:
        logits: [B, V] logits.
        k: int >= 0, or an integer tensor [B] of per-row values; 0 (or k >= V) means "off".

    Returns:
        New logits [B, V] with removed entries at -inf (the input itself when the scalar k is off).

    Raises:
        ValueError: on a negative or non-integer scalar k, or a badly shaped tensor.
    """
    _check_logits(logits)
    vocab_size = logits.shape[1]
    if not isinstance(k, Tensor):
        if not _is_integer(k) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {k!r}")
        if k == 0 or k >= vocab_size:
            return logits
    if not isinstance(k, Tensor):  # one k for every row: the k-th largest logit is the threshold
        threshold = logits.topk(k, dim=-1).values[:, -1:]  # [B, 1]
        return logits.masked_fill(logits < threshold, -math.inf)  # [B, V]
    ks = _per_row(k, logits, "top_k", torch.int64)  # [B or 1, 1]
    sorted_logits = logits.sort(dim=-1, descending=True).values  # [B, V]
    # k == 0 rows read position V-1 (the row minimum), so nothing is removed: "off" for free.
    kth_position = torch.where(ks == 0, vocab_size, ks).clamp(1, vocab_size) - 1  # [B or 1, 1]
    kth_position = kth_position.expand(logits.shape[0], 1)  # [B, 1]
    threshold = sorted_logits.gather(1, kth_position)  # [B, 1]
    return logits.masked_fill(logits < threshold, -math.inf)  # [B, V]


def top_p_filter(logits: Tensor, top_p: Param) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= top_p.

    A token is kept when the probability mass strictly more likely than it (in sorted order) is
    still below top_p, which always keeps the most likely token.

    Args:
        logits: [B, V] logits.
        top_p: scalar in (0, 1], or a tensor [B] of per-row values; 1.0 means "off".

    Returns:
        New logits [B, V] with removed entries at -inf (the input itself when the scalar is 1).

    Raises:
        ValueError: on a scalar outside (0, 1], or a badly shaped tensor.
    """
    _check_logits(logits)
    if not isinstance(top_p, Tensor):
        if not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if top_p == 1.0:
            return logits
    sorted_logits, sorted_ids = logits.float().sort(dim=-1, descending=True)  # [B, V], [B, V]
    sorted_probs = sorted_logits.softmax(dim=-1)  # [B, V]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [B, V]
    if isinstance(top_p, Tensor):
        top_ps = _per_row(top_p, logits, "top_p", torch.float32)  # [B or 1, 1]
        # top_p == 1 rows must keep everything even if rounding pushes the running sum to 1.
        keep_sorted = (mass_before < top_ps) | (top_ps >= 1.0)  # [B, V]
    else:  # a scalar below 1 (1 returned above); compared in float32, as the tensor form is
        keep_sorted = mass_before < top_p  # [B, V]
    keep = torch.zeros_like(keep_sorted).scatter_(1, sorted_ids, keep_sorted)  # [B, V]
    return logits.masked_fill(~keep, -math.inf)  # [B, V]


def min_p_filter(logits: Tensor, min_p: Param) -> Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's highest probability.

    Compared in log space (``logit - max_logit < log(min_p)``), which is the same rule without
    computing a softmax and without underflow for very unlikely tokens.

    Args:
        logits: [B, V] logits.
        min_p: scalar in [0, 1], or a tensor [B] of per-row values; 0.0 means "off".

    Returns:
        New logits [B, V] with removed entries at -inf (the input itself when the scalar is 0).

    Raises:
        ValueError: on a scalar outside [0, 1], or a badly shaped tensor.
    """
    _check_logits(logits)
    if not isinstance(min_p, Tensor):
        if not (0.0 <= min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
        if min_p == 0.0:
            return logits
    min_ps = _per_row(min_p, logits, "min_p", torch.float32)  # [B or 1, 1]
    log_ratio = logits.float() - logits.float().amax(dim=-1, keepdim=True)  # [B, V], log(p / p_max)
    # log(0) = -inf, so min_p == 0 rows keep everything.
    return logits.masked_fill(log_ratio < min_ps.log(), -math.inf)  # [B, V]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings.

    Args:
        temperature: >= 0; 0 means greedy (argmax), 1 leaves logits unscaled.
        top_k: integer >= 0; keep the k most likely tokens (0 = off).
        top_p: in (0, 1]; nucleus mass to keep (1.0 = off).
        min_p: in [0, 1]; drop tokens less likely than min_p times the top token (0.0 = off).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax (temperature == 0)."""
        return self.temperature == 0

    def validate(self) -> SamplingParams:
        """Check every field is in its allowed range.

        Returns:
            ``self``, so calls can be chained.

        Raises:
            ValueError: naming the bad field, its value and what is allowed.
        """
        if self.__dict__.get("_valid"):  # the fields are frozen: one passed check holds for good
            return self
        if isinstance(self.temperature, bool) or not (0.0 <= self.temperature < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_integer(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {self.top_p!r}")
        if isinstance(self.min_p, bool) or not (0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1] (0.0 = off), got {self.min_p!r}")
        object.__setattr__(self, "_valid", True)  # not a field: equality, hashing and asdict ignore it
        return self


def process_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Apply temperature, then top-k, top-p and min-p to a batch of logits.

    Args:
        logits: [B, V] raw next-token logits.
        params: sampling settings (validated here).

    Returns:
        float32 logits [B, V] with filtered tokens at -inf; for greedy params, the raw logits
        unchanged (greedy only needs the argmax, which filtering cannot change).
    """
    _check_logits(logits)
    params.validate()
    if params.greedy:
        return logits
    # a filter that is off returns its input, so skipping the call is the same result, minus the
    # per-token Python (decoders call this every step)
    processed = logits.float()  # [B, V]
    if params.temperature != 1.0:
        processed = apply_temperature(processed, params.temperature)  # [B, V]
    if params.top_k != 0:
        processed = top_k_filter(processed, params.top_k)  # [B, V]
    if params.top_p != 1.0:
        processed = top_p_filter(processed, params.top_p)  # [B, V]
    if params.min_p != 0.0:
        processed = min_p_filter(processed, params.min_p)  # [B, V]
    return processed  # [B, V]


def probs_from_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Sampling distribution over the vocabulary after all processing.

    Args:
        logits: [B, V] raw next-token logits.
        params: sampling settings (validated here).

    Returns:
        float32 probabilities [B, V]; for greedy params, a one-hot row at each argmax.
    """
    processed = process_logits(logits, params)  # [B, V]
    if params.greedy:
        argmax = logits.argmax(dim=-1, keepdim=True)  # [B, 1]
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(1, argmax, 1.0)  # [B, V]
    return processed.softmax(dim=-1)  # [B, V]


def _inverse_cdf(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Map one uniform in [0, 1) per row to a token index through the row's cumulative distribution.

    Args:
        probs: [B, V] non-negative weights with positive mass per row (need not sum exactly to 1).
        uniforms: [B] draws in [0, 1).

    Returns:
        LongTensor [B] of token indices; never a zero-probability token.
    """
    cumulative = probs.float().cumsum(dim=-1)  # [B, V]
    # Scaling by the row total makes slightly unnormalised rows (float error) sample correctly.
    targets = uniforms.to(cumulative).unsqueeze(1) * cumulative[:, -1:]  # [B, 1]
    # right=True finds the first cumulative value strictly above the target, which skips
    # zero-probability tokens (their cumulative value equals their predecessor's).
    tokens = torch.searchsorted(cumulative, targets, right=True).squeeze(1)  # [B]
    # Rounding can put the target at or past the final cumulative value (index V); fall back to
    # the last token that can actually be drawn. Below the final value the index found is already
    # a positive-probability token at or before that one, so the fallback is computed only when
    # some row needs it (one cheap check instead of four ops per draw).
    vocab_size = probs.shape[1]
    if not bool((tokens >= vocab_size).any()):
        return tokens  # [B]
    last_nonzero = vocab_size - 1 - (probs > 0).flip(dims=[1]).int().argmax(dim=-1)  # [B]
    return torch.minimum(tokens, last_nonzero)  # [B]


def sample(probs: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Draw one token per row from a batch of distributions.

    Row ``i`` consumes exactly one uniform from ``generators[i]`` and nothing else, so its token
    is the same whatever the batch size or the other rows. The inverse-CDF lookup itself is
    batched.

    Args:
        probs: [B, V] probabilities (non-negative, positive mass in every row).
        generators: one generator per row (the same generator may appear more than once, each
            occurrence consuming one draw, in row order), or None to use torch's global RNG.

    Returns:
        LongTensor [B] of sampled token indices, on ``probs.device``.

    Raises:
        ValueError: if probs is not [B, V] or the number of generators differs from B.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must be [B, V], got shape {tuple(probs.shape)}")
    batch_size = probs.shape[0]
    if generators is None:
        uniforms = torch.rand(batch_size, device=probs.device)  # [B]
    else:
        if len(generators) != batch_size:
            raise ValueError(f"got {len(generators)} generators for a batch of {batch_size} rows")
        # One draw per row from that row's own generator is what decouples rows; gathering the
        # draws host-side and moving them once avoids a device copy per row (torch.rand(1) takes
        # the same value from a generator as torch.rand(()).item() did, without the round trip).
        draws = [torch.rand(1, generator=gen, device=gen.device) for gen in generators]  # B x [1]
        if batch_size != 1:
            draws = [torch.cat([d.cpu() for d in draws] or [torch.empty(0)])]  # [B]
        uniforms = draws[0].to(probs.device)  # [B]
    return _inverse_cdf(probs, uniforms)  # [B]


def sample_from_logits(
    logits: Tensor, params: SamplingParams, generators: Sequence[torch.Generator] | None = None
) -> Tensor:
    """Pick the next token per row: argmax when greedy, otherwise sample the processed distribution.

    Args:
        logits: [B, V] raw next-token logits.
        params: sampling settings (validated here).
        generators: per-row generators as in :func:`sample`; unused (no RNG consumed) when greedy.

    Returns:
        LongTensor [B] of token indices.
    """
    _check_logits(logits)
    params.validate()
    if params.greedy:
        return logits.argmax(dim=-1)  # [B]
    return sample(probs_from_logits(logits, params), generators)  # [B]


def generator_seed(seed: int, index: int) -> int:
    """Deterministic 64-bit seed for candidate ``index`` of base seed ``seed``.

    Uses a cryptographic hash of the pair (not Python's salted ``hash()``), so the value is stable
    across processes, machines and Python versions, and nearby pairs give unrelated seeds.

    Args:
        seed: base seed (any integer).
        index: candidate index (any integer).

    Returns:
        An integer in [0, 2**64).
    """
    for name, value in (("seed", seed), ("index", index)):
        if not _is_integer(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    digest = hashlib.blake2b(
        f"ponder.sampling/{operator.index(seed)}/{operator.index(index)}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little")


def make_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One independent CPU generator per candidate index, seeded from ``(seed, index)``.

    Args:
        seed: base seed shared by the batch.
        indices: candidate indices; the same (seed, index) always yields the same stream.

    Returns:
        A list of ``torch.Generator`` objects, in the order of ``indices``.
    """
    generators = []
    for index in indices:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(generator_seed(seed, index))
        generators.append(generator)
    return generators
