"""The contracts every strategy, decoder and modality shares.

Results: `Compute` (what producing a result cost), `Candidate` (one output with its score and seed),
`Result` (best + all candidates + compute + a JSON-serialisable config that reproduces the run), and
`Decoded` (what a decoder returns: new token ids per row).

Protocols: `SequenceModel` (text, AR image tokens, codec-LM speech), `Denoiser` (image and music
diffusion) and `Verifier` — what search needs from a modality and nothing more. The core never knows
which modality it drives. What search reads beyond them is a named capability checked with
`isinstance`, never probed with getattr: `CountsNFE`, `HasDefaultSteps`, `Named`, `Describes`,
`DecodesTensor` (denoisers), `DifferentiableVerifier` (verifiers gradients pass through).

Seeding: candidate ``i`` of a run with base seed ``s`` draws from its own generator seeded from
``(s, i)`` (`candidate_generators`), so an output never depends on the batch size or on which other
candidates ran.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import generator_seed, make_generators

__all__ = [
    "Candidate",
    "Compute",
    "CountsNFE",
    "DecodesTensor",
    "Decoded",
    "Denoiser",
    "Describes",
    "DifferentiableVerifier",
    "HasDefaultSteps",
    "Named",
    "ProcessVerifier",
    "Result",
    "SequenceCache",
    "SequenceModel",
    "Verifier",
    "candidate_generators",
    "candidate_seed",
    "to_jsonable",
]


@dataclass
class Compute:
    """What producing a result cost; nested calls add theirs with ``+=``."""

    model_calls: int = 0  # forward passes of the main model (a verify pass of k tokens counts 1)
    draft_calls: int = 0  # forward passes of any draft / auxiliary model
    tokens: int = 0  # tokens emitted (accepted)
    nfe: int = 0  # denoiser evaluations (diffusion)
    verifier_calls: int = 0  # items scored by verifiers
    backward_passes: int = 0  # gradient passes (noise optimisation); a backward costs about two forwards
    seconds: float = 0.0  # wall time

    def __iadd__(self, other: Compute) -> Compute:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def add_work(self, other: Compute) -> Compute:
        """Add everything but `seconds`: for nested work already inside this compute's `timed()`."""
        seconds = self.seconds
        self += other
        self.seconds = seconds
        return self

    def __add__(self, other: Compute) -> Compute:
        out = dataclasses.replace(self)
        out += other
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["seconds"] = round(d["seconds"], 6)
        return d

    @contextmanager
    def timed(self) -> Iterator[Compute]:
        """Add the wall time of the ``with`` body to `seconds`."""
        start = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds += time.perf_counter() - start


@dataclass
class Candidate:
    """One output of a run."""

    output: Any  # str | PIL.Image.Image | Audio(waveform, sample_rate) (outputs.Audio) | token ids
    score: float | None  # the verifier's score; None when no verifier scored it
    seed: int  # re-renders exactly this candidate with the recorded config
    meta: dict = field(default_factory=dict)  # index, token ids, stop reason, ...

    def to_dict(self) -> dict:
        return {"output": to_jsonable(self.output), "score": self.score, "seed": self.seed,
                "meta": to_jsonable(self.meta)}


@dataclass
class Result:
    """What every strategy and decoder returns, so every surface shows the same things."""

    best: Candidate | None  # None when the strategy abstains
    candidates: list[Candidate]
    compute: Compute
    config: dict  # everything needed to reproduce the run (JSON-serialisable)

    def to_dict(self) -> dict:
        """The ``--json`` shape: best, candidates, compute, config."""
        return {
            "best": self.best.to_dict() if self.best is not None else None,
            "candidates": [c.to_dict() for c in self.candidates],
            "compute": self.compute.to_dict(),
            "config": to_jsonable(self.config),
        }


@dataclass
class Decoded:
    """What a decoder returns for a batch of prompts."""

    tokens: list[list[int]]  # new token ids per row, EOS and anything after a stop excluded
    stop_reasons: list[str]  # per row: "eos" | "stop" | "length"
    logprobs: list[list[float]]  # per row: log p(token) under the model's untempered distribution
    compute: Compute


def to_jsonable(value: Any) -> Any:
    """Best-effort conversion of results and configs to plain JSON types."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    return repr(value)


def lookup(table: dict[str, Any], what: str, name: str) -> Any:
    """`table[name]`, or a ConfigError naming the unknown `what` and every allowed name."""
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; allowed: {', '.join(sorted(table))}")
    return table[name]


# ---- seeding ------------------------------------------------------------------------------------


def candidate_seed(seed: int, index: int) -> int:
    """The seed of candidate `index` in a run with base seed `seed`."""
    return generator_seed(seed, index)


def candidate_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per candidate, seeded from (seed, index): batch-size independent."""
    return make_generators(seed, indices)


# ---- protocols ----------------------------------------------------------------------------------


@runtime_checkable
class SequenceCache(Protocol):
    """A model's KV cache for one batch; rollback by `truncate`."""

    @property
    def length(self) -> int: ...  # positions stored (shared across rows, padding included)

    def truncate(self, length: int) -> None: ...  # keep positions [0, length)

    def reorder(self, index: torch.Tensor) -> None: ...  # select / duplicate rows, index: [B']


@runtime_checkable
class SequenceModel(Protocol):
    """What search needs from an autoregressive model (text, AR image tokens, codec-LM speech)."""

    eos_token_ids: frozenset[int]  # ids that end a sequence
    context_length: int  # most positions the model can attend to

    def encode(self, prompt: Any) -> list[int]: ...  # prompt -> token ids (BOS included if any)

    def decode(self, ids: Sequence[int]) -> Any: ...  # new token ids -> output (str, image, audio)

    def new_cache(self) -> SequenceCache: ...

    def prefill(self, prompt_ids: Sequence[Sequence[int]], cache: SequenceCache) -> torch.Tensor:
        """Left-pad and run the prompts; fill `cache`; return next-token logits [B, V]."""
        ...

    def forward(self, tokens: torch.Tensor, cache: SequenceCache,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: [B, T] -> logits [B, T, V]; advances `cache` by T positions.

        attn_mask: optional [B, T, T] boolean mask among the new tokens (a token tree); None means
        causal."""
        ...


@runtime_checkable
class Denoiser(Protocol):
    """What noise search needs from a diffusion model (images, music).

    Time runs from `timesteps(steps)[0]` (pure noise) down to the last entry; `cond` is whatever
    `condition(prompt)` returned for the prompt (class label, text embeddings, ...). Every method is
    batched over the leading dimension of `x`; all samplers used for search are deterministic, so a
    candidate is fully determined by its initial noise. No method disables autograd: the caller
    decides whether gradients flow (search strategies run under ``torch.no_grad()``; noise
    optimisation differentiates through `step` and a `DecodesTensor` decode).
    """

    def condition(self, prompt: Any, n: int) -> Any: ...  # prompt -> conditioning for n rows (InputError if bad)

    def timesteps(self, steps: int) -> list[float]: ...  # the sampler's schedule, noisiest first

    def noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor: ...  # one initial x_T per generator

    def step(self, x_t: torch.Tensor, t: float, t_next: float, cond: Any) -> torch.Tensor: ...  # one NFE

    def predict_x0(self, x_t: torch.Tensor, t: float, cond: Any) -> torch.Tensor: ...  # one NFE

    def renoise(self, x: torch.Tensor, t_from: float, t_to: float, noise: torch.Tensor) -> torch.Tensor: ...

    def decode(self, x0: torch.Tensor) -> list[Any]: ...  # clean latents -> outputs (PIL images, audio)


# ---- what search may read beyond `Denoiser` (each checked with isinstance) ------------------------


@runtime_checkable
class CountsNFE(Protocol):
    """A model that counts its own network evaluations (per batch row; a guidance pair counts 2)."""

    nfe: int  # evaluations so far; strategies add the difference around their work to Compute.nfe


@runtime_checkable
class HasDefaultSteps(Protocol):
    """A denoiser with its own default number of sampling steps."""

    default_steps: int


@runtime_checkable
class Named(Protocol):
    """A model with the name results record (the spec it was loaded from)."""

    name: str


@runtime_checkable
class Describes(Protocol):
    """A model that describes itself for `Result.config["model_info"]`."""

    def info(self) -> dict: ...  # JSON-serialisable: family, sampler, sizes, ...


@runtime_checkable
class DecodesTensor(Protocol):
    """A denoiser that decodes clean latents to a tensor losses can read (no clamping, no PIL), so
    gradients pass from a loss on the output back to the initial noise."""

    def decode_tensor(self, x0: torch.Tensor) -> torch.Tensor: ...  # [B, ...] latents -> [B, ...] output tensor


@runtime_checkable
class Verifier(Protocol):
    """Scores finished outputs; higher is better."""

    name: str

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor: ...  # -> [N]


@runtime_checkable
class ProcessVerifier(Verifier, Protocol):
    """Also scores unfinished outputs (partial solutions), step by step."""

    def score_steps(self, prompt: Any, partials: Sequence[Any]) -> torch.Tensor: ...  # -> [N]


@runtime_checkable
class DifferentiableVerifier(Verifier, Protocol):
    """Also scores output tensors (what `DecodesTensor.decode_tensor` gives) so that gradients pass
    through the score: the objective of noise optimisation (controls such as loudness or melody)."""

    def score_tensor(self, prompt: Any, x: torch.Tensor) -> torch.Tensor: ...  # x: [N, ...] -> [N], differentiable


StreamCallback = Callable[[int, int], None]  # (row, token id) for every emitted token


# ---- capabilities beyond these protocols: search/core/capabilities.py (it builds on `Named` above) ----

from ponder.search.core.capabilities import (  # noqa: E402
    AnswerExtractor,
    HiddenStateModel,
    LayerSkippingModel,
    LengthChecked,
    MaskedDecoder,
    MaskedModel,
    MedusaDraft,
    OnDevice,
    OutputEncoder,
    PaddedModel,
    RowImageModel,
    RowRollbackCache,
    SteppedModel,
    TokenizedModel,
    TreeCache,
    VerifiedHook,
    Vocabulary,
    device_of,
    display_name,
)

__all__ += ["AnswerExtractor", "HiddenStateModel", "LayerSkippingModel", "LengthChecked", "MaskedDecoder",
            "MaskedModel", "MedusaDraft", "OnDevice", "OutputEncoder", "PaddedModel", "RowImageModel",
            "RowRollbackCache", "SteppedModel", "TokenizedModel", "TreeCache", "VerifiedHook", "Vocabulary",
            "device_of", "display_name"]

from ponder.search.core.outputs import Audio, AudioOutput  # noqa: E402

__all__ += ["Audio", "AudioOutput"]
