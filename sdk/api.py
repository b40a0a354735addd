"""The Python surface: `load` a model, `generate` with any strategy / verifier / decoder.

Mirrors the CLI one to one (`ponder generate MODALITY --model SPEC ...`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ponder import zoo
from ponder.errors import ConfigError
from ponder.modalities import registry
from ponder.request import (
    as_stops,
    check_generate,
    check_load_options,
    check_lossless,
    check_options,
    check_verifier_name,
    check_zoo_model,
    named_parameters,
    verifier_parts,
)

__all__ = ["check_lossless", "check_options", "generate", "load", "load_verifier", "text_stop"]

def __getattr__(name: str):
    if name == "MODALITIES":  # the registered modalities, read on use (a plug-in's show up too)
        return tuple(registry.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(modality: str, spec: str | Path, **options):
    """Load a model of `modality` from ``zoo:NAME`` or a local folder.

    Args:
        modality: a registered modality (``ponder.modalities.registry.names()``: text, image, ...).
        spec: ``zoo:NAME`` (see `ponder zoo list`) or a folder written by `save_pretrained`.
        options: passed to the modality's loader: ``trust_remote_code=True``, ``dtype=``, ``device=``
            and the modality's own load options (its spec's `options`; for image diffusion e.g.
            ``sampler=``, ``guidance_scale=``, ``height=``, ``width=``); an option of another
            modality is one ConfigError naming whose it is.
    Returns:
        A model object implementing the modality's protocol (a `SequenceModel`, a `Denoiser`, ...).
    """
    modality_spec = registry.get(modality)
    options = check_load_options(modality_spec, options)
    spec = str(spec)
    name = None
    if spec.startswith("zoo:"):
        check_zoo_model(spec, modality_spec.name)
        folder, name = zoo.folder(spec), spec
    else:
        folder = Path(spec)
    return modality_spec.load(folder, name=name or spec, **options)


def load_verifier(modality: str, spec: str | Path, model=None, **options):
    """A verifier of `modality` by name, a comma-separated ensemble of names, or a local folder.

    Names are the modality's (its spec's `verifiers`; for text ``exact``, ``orm``, ``prm``,
    ``self``; for images ``classifier``, ``clip``, ``aesthetic``). ``ensemble`` stands for the
    modality's default ensemble, ``a,b,...`` for a rank-averaged ensemble of those. A name of another
    modality's verifier is one ConfigError saying what it scores.
    """
    modality_spec = registry.get(modality)
    spec = str(spec)
    parts = verifier_parts(modality_spec, spec)
    if len(parts) > 1 or spec == "ensemble":
        from ponder.search.verifiers import ensemble

        return ensemble([load_verifier(modality, part, model=model, **options) for part in parts], name=spec)
    if not parts:
        raise ConfigError(f"verifier {spec!r} names no verifier")
    name = parts[0]  # "prm," is "prm"
    check_verifier_name(modality_spec, name)
    if modality_spec.load_verifier is None:
        raise ConfigError(f"the {modality} modality has no verifiers")
    return modality_spec.load_verifier(name, model=model, **options)


def _denoiser_strategies() -> tuple[str, ...]:
    """Strategies that run on a `Denoiser` (the rest read tokens or steps of text)."""
    from ponder.search.scaling import NOISE_STRATEGIES

    return ("sample", "best-of-n", "worst-of-n", *NOISE_STRATEGIES)


def _check_model_fit(model, strategy: str, decoder, draft, calibrate, steps) -> None:
    """ConfigError for options that do not fit the loaded model: token decoders, drafts and calibration
    on a diffusion model; denoising steps or noise search on a token model."""
    from ponder.search.core import Denoiser
    from ponder.search.scaling import NOISE_STRATEGIES

    key = strategy.replace("_", "-") if isinstance(strategy, str) else strategy
    if not isinstance(model, Denoiser):
        if steps is not None:
            raise ConfigError("steps (denoising steps) applies to diffusion models; this model decodes tokens")
        if key in NOISE_STRATEGIES:
            raise ConfigError(f"strategy {strategy!r} searches the initial noise of a diffusion model; "
                              f"{getattr(model, 'name', 'this model')} decodes tokens")
        return
    if key not in _denoiser_strategies():
        raise ConfigError(f"strategy {strategy!r} does not run on a diffusion model; use one of "
                          f"{', '.join(_denoiser_strategies())}")
    if decoder != "plain":
        raise ConfigError(f"decoder {decoder!r} decodes tokens; a diffusion model denoises (its sampler is set at "
                          "load time, e.g. sampler='ddim')")
    if draft is not None:
        raise ConfigError("a draft model speeds up token decoding; a diffusion model takes none")
    if calibrate is not None:
        raise ConfigError("calibrate draws token samples of the model; it is not available for diffusion models")


def _zoo_student(model) -> str | None:
    """``zoo:STUDENT`` of a model loaded from the zoo whose entry names a built student, else None."""
    name = getattr(model, "name", None)
    if not isinstance(name, str) or not name.startswith("zoo:"):
        return None
    table = zoo.ZOO
    entry = table.get(name.removeprefix("zoo:"))
    if entry is None or entry.student is None or entry.student not in table or not table[entry.student].built:
        return None
    return f"zoo:{entry.student}"


def text_stop(model, stop: Sequence[str]) -> Callable[[int, list[int]], bool] | None:
    """A decoder stop test that fires once a row's text contains any of `stop`."""
    stop = [s for s in stop if s]
    if not stop:
        return None

    def check(row: int, tokens: list[int]) -> bool:
        # the whole row, not a tail window: special tokens decode to "" and may split a stop string
        text = model.decode(tokens)
        return any(s in text for s in stop)

    return check


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    ends = [text.find(s) + len(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text


def generate(
    model,
    prompt: Any,
    *,
    strategy: str = "sample",
    n: int = 1,
    verifier: str | Any | None = None,
    decoder: str = "plain",
    draft: str | Any | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    max_new_tokens: int = 64,
    stop: Sequence[str] | str | None = None,
    stream: Callable[[int, str], None] | None = None,
    calibrate: int | None = None,
    lossless: bool = False,
    guide: str | None = None,
    context: str | None = None,
    guide_options: dict | None = None,
    **options,
):
    """Generate from `model` with a scaling strategy and a decoder.

    Args:
        model: what `ponder.load` returned.
        prompt: the prompt (text for text models).
        strategy: scaling strategy name (see `ponder.search.scaling.STRATEGIES`).
        n: number of candidates.
        verifier: verifier name / folder / object scoring the candidates (optional for `sample`).
        decoder: decoder name (see `ponder.search.decoding.DECODERS`); "auto" runs the fastest lossless
            decoder measured on the nearest workload in the speed history (options ``history=`` folder,
            ``prompt_kind=``); the choice and why is in ``result.config["auto"]``.
        draft: draft model spec or object, for decoders that use one.
        seed: base seed; candidate i draws from its own generator seeded from (seed, i).
        temperature, top_k, top_p, min_p: sampling; temperature 0 is greedy.
        max_new_tokens: most new tokens per candidate.
        stop: stop string(s); the output is cut right after the first one.
        stream: callback(candidate_index, text_delta) as tokens arrive (strategies that decode step
            by step — beam, dvts, diverse-beam, particles — report each final output once).
        calibrate: score with the verifier's quantile among this many of the model's own samples
            per prompt (InfAlign's calibrated reward) instead of its raw score.
            For a diffusion model (`Denoiser`) the token options (decoder, draft, sampling,
            max_new_tokens, stop, stream, calibrate) do not apply; pass ``steps=K`` (denoising steps)
            and a strategy that runs on a Denoiser (sample, best-of-n, worst-of-n, the noise searches, ditto, ditto-2).
        lossless: refuse lossy decoders (bild, ead, medusa with acceptance="typical") with a
            ConfigError; ``result.config["lossy"]`` says whether the run's decoder was lossy.
        guide: a guide (`ponder.search.guides.GUIDES`: "cad", "uscd", "knn") that changes the
            distribution the model samples from; every strategy and decoder runs on the guided model
            (a lossless decoder is lossless with respect to the guided distribution).
            ``result.config["guide"]`` records it.
        context: the text a context guide puts before the prompt (CAD: contrasted with the prompt alone).
        guide_options: the guide's own options (CAD: ``alpha``; USCD: ``alpha``, ``threshold``,
            ``keep_lines``, ``lame``; kNN-LM: ``corpus`` or ``datastore``, ``lam``, ``k``, ``temperature``).
        options: strategy-specific options (e.g. beam_width, weight_temperature, resampling,
            ess_threshold, gibbs_iterations, probe, confidence, abstain_below); an option the
            strategy does not take is an error naming the ones it does.
    Returns:
        `ponder.search.core.Result`.
    """
    from ponder.request import check_guide, check_sampling
    from ponder.search.core import Denoiser

    guide_options = guide_options or {}
    guide_fn = check_guide(guide, context, guide_options)
    spec = registry.of_model(model)
    modality = spec.name
    steps = options.pop("steps", None)
    strategy_fn, lossy = check_generate(spec, strategy=strategy, n=n, decoder=decoder, temperature=temperature,
                                        top_k=top_k, top_p=top_p, min_p=min_p, max_new_tokens=max_new_tokens,
                                        calibrate=calibrate, has_verifier=verifier is not None, steps=steps,
                                        lossless=lossless, options=options)
    _check_model_fit(model, strategy, decoder, draft, calibrate, steps)
    if steps is not None:
        options["steps"] = steps
    sampling = check_sampling(temperature, top_k, top_p, min_p)
    if isinstance(verifier, (str, Path)):
        verifier = load_verifier(modality, verifier, model=model)
    if calibrate is not None:
        from ponder.search.verifiers import Calibrated

        verifier = Calibrated.against_model(verifier, model, m=calibrate, seed=seed + 1, sampling=sampling,
                                            max_new_tokens=max_new_tokens)
    if isinstance(draft, (str, Path)):
        draft = load(modality, draft)
    if isinstance(options.get("student"), (str, Path)):  # DITTO-2's one-step student, a model spec
        options["student"] = load(modality, options["student"])
    elif "student" not in options and "student" in named_parameters(strategy_fn):
        own = _zoo_student(model)  # a zoo teacher knows its own student
        if own is not None:
            options["student"] = load(modality, own)
    if spec.adapt is not None:  # the modality's own generate options become what strategies take
        verifier, options = spec.adapt(model, verifier, options)
    auto_choice = None
    if decoder == "auto":
        decoder, draft, auto_choice = _resolve_auto(model, draft, n, sampling, options)
    stops = as_stops(stop)
    token_stream = None
    if stream is not None:
        seen: dict[int, list[int]] = {}
        shown: dict[int, str] = {}

        def emit(row: int, text: str) -> None:
            # decoding more tokens can re-normalise earlier text; emit only what extends it
            done = shown.get(row, "")
            if len(text) > len(done) and text.startswith(done):
                stream(row, text[len(done):])
                shown[row] = text

        def token_stream(row: int, token: int) -> None:
            ids = seen.setdefault(row, [])
            ids.append(token)
            text = model.decode(ids)
            if not text.endswith("\ufffd"):  # else a multi-byte character waits for its next token
                emit(row, text)

    if isinstance(model, Denoiser):  # no token options: a diffusion strategy takes steps and its own options
        if guide_fn is not None:
            name = getattr(model, "name", "this model")
            raise ConfigError(f"guide {guide!r} guides a sequence model's tokens; {name} is a diffusion model")
        result = strategy_fn(model, prompt, verifier, n=n, seed=seed, **options)
    else:
        runs_on = model if guide_fn is None else guide_fn(model, context=context, **guide_options)
        result = strategy_fn(runs_on, prompt, verifier, n=n, seed=seed, decoder=decoder, draft=draft,
                             sampling=sampling, max_new_tokens=max_new_tokens, stop=text_stop(model, stops),
                             stream=token_stream, **options)
        if guide_fn is not None:
            result.config["guide"] = {"name": guide, **{k: _recorded(v) for k, v in guide_options.items()},
                                      "context_chars": len(context) if isinstance(context, str) else None}
    if stream is not None:  # flush what was held back (a row that ended inside a character)
        for c in result.candidates:
            if isinstance(c.output, str):
                emit(c.meta.get("index"), c.output)
    if stops:
        for c in result.candidates:
            if isinstance(c.output, str):
                c.output = _cut_at_stop(c.output, stops)
        result.config["stop"] = stops
    result.config["modality"] = modality
    outputs = [c.output for c in result.candidates]
    if spec.diversity is not None and len(outputs) > 1:
        result.config["diversity"] = spec.diversity(outputs)
    result.config["lossy"] = lossy
    if auto_choice is not None:
        result.config["auto"] = auto_choice
    return result


def _recorded(value: Any) -> Any:
    """A guide option as result.config keeps it: texts and lists by their size, not their contents."""
    if isinstance(value, list):
        return f"{len(value)} items"
    if isinstance(value, str) and len(value) > 200:
        return f"{value[:60]}... ({len(value)} characters)"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return f"{type(value).__name__} object"


def _resolve_auto(model, draft, n: int, sampling, options: dict):
    """`decoder="auto"`: (decoder, draft, the choice as a dict); pops auto's own options."""
    from ponder.search.decoding import LOSSY
    from ponder.search.decoding.auto import choose, history_path, workload_of

    kind = options.pop("prompt_kind", None)
    choice = choose(workload_of(model, draft, n, sampling, kind), history_path(options.pop("history", None)),
                    sorted(LOSSY))
    options.update(choice.options)
    return choice.decoder, draft if choice.uses_draft else None, choice.to_dict()
