"""Pieces every scaling strategy shares: seeded batched decoding of candidates (a `SequenceModel`
decodes tokens; a `Denoiser` denoises noises, see `denoise`), and verifier scoring with its cost
counted."""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ponder.errors import ConfigError, check_int
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Candidate, Compute, Denoiser, Verifier, candidate_generators, candidate_seed
from ponder.search.core.capabilities import AnswerExtractor, LengthChecked, display_name


def checked_sampling(sampling: SamplingParams) -> SamplingParams:
    """`sampling`, validated; a bad value becomes a ConfigError naming it and what is allowed."""
    try:
        return sampling.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def decoder_name(decoder: str | Callable) -> str:
    """What configs record for a decoder: its registry name, a decoder function's own name, else "custom"."""
    if isinstance(decoder, str):
        return decoder
    if isinstance(decoder, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return decoder.__name__
    return "custom"


def check_n(n: int) -> None:
    check_int("n", n, what="number of candidates")


def decode_candidates(
    model,
    prompt: Any,
    *,
    n: int,
    seed: int,
    compute: Compute,
    indices: Sequence[int] | None = None,
    decoder: str | Callable = "plain",
    draft=None,
    sampling: SamplingParams | None = None,
    max_new_tokens: int = 64,
    stop: Callable | None = None,
    stream: Callable | None = None,
    **decoder_options,
) -> tuple[list[Candidate], dict]:
    """Decode candidates `indices` (default 0..n-1) of `prompt` as one batch.

    Every candidate's prompt prefill is identical; candidate i uses generator (seed, i), so its
    output is the same whatever else is in the batch. Returns the candidates and the config dict
    that reproduces them.
    """
    from ponder.search.decoding import get_decoder

    check_n(n)
    if isinstance(model, Denoiser):  # diffusion: seeded noises denoised as one batch (text options unused)
        from ponder.search.scaling.denoise import denoise_candidates

        return denoise_candidates(model, prompt, n=n, seed=seed, compute=compute, indices=indices,
                                  **decoder_options)
    sampling = checked_sampling(sampling or SamplingParams())
    check_int("max_new_tokens", max_new_tokens)
    decode_fn = get_decoder(decoder) if isinstance(decoder, str) else decoder
    indices = list(range(n)) if indices is None else list(indices)
    prompt_ids = model.encode(prompt)
    if isinstance(model, LengthChecked):
        model.check_length(len(prompt_ids), max_new_tokens)
    generators = candidate_generators(seed, indices)
    decoded = decode_fn(model, [prompt_ids] * len(indices), sampling=sampling, max_new_tokens=max_new_tokens,
                        generators=generators, stop=stop, stream=stream, draft=draft, **decoder_options)
    compute.add_work(decoded.compute)
    candidates = []
    for row, index in enumerate(indices):
        candidates.append(Candidate(
            output=model.decode(decoded.tokens[row]),
            score=None,
            seed=candidate_seed(seed, index),
            meta={
                "index": index,
                "token_ids": decoded.tokens[row],
                "stop_reason": decoded.stop_reasons[row],
                "logprob": float(sum(decoded.logprobs[row])),
                "num_tokens": len(decoded.tokens[row]),
            },
        ))
    config = {
        "model": display_name(model, type(model).__name__),
        "prompt": prompt,
        "n": n,
        "seed": seed,
        "decoder": decoder_name(decoder),
        "draft": display_name(draft, None),
        "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
                     "min_p": sampling.min_p},
        "max_new_tokens": max_new_tokens,
        "decoder_options": dict(decoder_options),
    }
    return candidates, config


def decode_and_score(model, prompt: Any, verifier: Verifier | None, *, n: int, seed: int, strategy: str,
                     **options) -> tuple[list[Candidate], Compute, dict]:
    """`n` candidates decoded as one batch and scored by `verifier` (when given), timed; the config
    names the strategy and the verifier. A verifier's score is also kept as ``meta["verifier_score"]``
    (voting strategies replace `score` with the vote)."""
    compute = Compute()
    with compute.timed():
        candidates, config = decode_candidates(model, prompt, n=n, seed=seed, compute=compute, **options)
        score_candidates(verifier, prompt, candidates, compute)
    for c in candidates:
        if c.score is not None:
            c.meta["verifier_score"] = c.score
    config.update({"strategy": strategy, "verifier": display_name(verifier, None)})
    return candidates, compute, config


def score_candidates(verifier: Verifier | None, prompt: Any, candidates: list[Candidate],
                     compute: Compute) -> torch.Tensor | None:
    """Score every candidate with `verifier` (in place), counting the verifier calls."""
    if verifier is None or not candidates:
        return None
    scores = verifier.score(prompt, [c.output for c in candidates])  # [N]
    compute.verifier_calls += len(candidates)
    for c, s in zip(candidates, scores.tolist()):
        c.score = float(s)
    return scores


def require_verifier(verifier: Verifier | None, strategy: str) -> Verifier:
    if verifier is None:
        raise ConfigError(f"strategy {strategy!r} selects by a verifier; pass one (e.g. --verifier orm)")
    return verifier


def answer_function(model, answer_fn: Callable | None = None) -> Callable[[Any], Any]:
    """How to read a final answer from an output: `answer_fn`, else the model's (an `AnswerExtractor`)."""
    if answer_fn is not None:
        return answer_fn
    if not isinstance(model, AnswerExtractor):
        raise ConfigError(f"voting needs final answers: {type(model).__name__} has no extract_answer; "
                          "pass answer_fn=")
    return model.extract_answer


def check_threshold(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


def finish(best: Candidate | None, candidates: list[Candidate], compute: Compute, config: dict,
           abstain_below: float | None = None):
    """The `Result`, abstaining (best=None) when the best score is below `abstain_below`
    (Inference Scaling fLaws: with an imperfect verifier, returning nothing can beat a likely false
    positive)."""
    from ponder.search.core import Result

    abstain_below = check_threshold("abstain_below", abstain_below)
    if abstain_below is not None:
        config["abstain_below"] = abstain_below
        if best is not None and (best.score is None or best.score < abstain_below):
            config["abstained"] = True
            best = None
    return Result(best=best, candidates=candidates, compute=compute, config=config)
