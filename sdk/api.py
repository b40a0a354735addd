"""The Python surface: `load` a model, `generate` with any strategy / verifier / decoder.

Mirrors the CLI one to one (`ponder generate MODALITY --model SPEC ...`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ponder import zoo
from ponder.errors import ConfigError, ModelLoadError

MODALITIES = ("text", "image")


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; available: {', '.join(MODALITIES)}")


def load(modality: str, spec: str | Path, **options):
    """Load a model of `modality` from ``zoo:NAME`` or a local folder.

    Args:
        modality: "text" or "image".
        spec: ``zoo:NAME`` (see `ponder zoo list`) or a folder written by `save_pretrained`.
        options: passed to the modality's loader (e.g. ``trust_remote_code=True``, ``dtype=``,
            ``device=``; for diffusion images also ``sampler=``, ``guidance_scale=``, ``height=``,
            ``width=``, ``steps=``; for AR images ``decoder=`` options of `ar.load_ar`).
    Returns:
        A model object implementing the modality's protocol (`TextModel` for text; a `Denoiser` for a
        diffusers pipeline folder, or a `SequenceModel` whose outputs are images, for image).
    """
    _check_modality(modality)
    spec = str(spec)
    name = None
    if spec.startswith("zoo:"):
        entry = zoo.entry(spec)
        if entry.modality != modality or entry.kind not in ("model", "draft"):
            def a(word: str) -> str:
                return ("an " if word[0] in "aeiou" else "a ") + word

            raise ModelLoadError(f"zoo:{entry.name} is {a(entry.modality)} {entry.kind}, not {a(modality)} model")
        folder, name = zoo.folder(spec), spec
    else:
        folder = Path(spec)
    if modality == "image":
        from ponder.modalities.image import load as load_image

        return load_image(folder, name=name or str(spec), **options)
    from ponder.modalities.text import load as load_text

    return load_text(folder, name=name or str(spec), **options)


VERIFIER_NAMES = ("exact", "orm", "prm", "self", "ensemble")
IMAGE_VERIFIER_NAMES = ("classifier", "clip", "aesthetic", "ensemble")


def load_verifier(modality: str, spec: str | Path, model=None, **options):
    """A verifier by name, a comma-separated ensemble of names, or a local folder.

    Names: ``exact`` (the arith checker), ``orm`` / ``prm`` (zoo verifiers, ``zoo:`` optional),
    ``self`` (the generator's own normalised likelihood; needs `model`), ``ensemble`` (orm + prm,
    rank-averaged), or ``a,b,...`` (a rank-averaged ensemble of those). A folder holding a
    sequence-classification model loads as an outcome verifier; a token-classification model as a
    process verifier.
    """
    _check_modality(modality)
    spec = str(spec)
    if spec == "ensemble" or ("," in spec and not Path(spec).exists()):
        from ponder.search.verifiers import ensemble

        default = ["classifier", "aesthetic"] if modality == "image" else ["orm", "prm"]
        names = default if spec == "ensemble" else [s.strip() for s in spec.split(",") if s.strip()]
        return ensemble([load_verifier(modality, name, model=model, **options) for name in names], name=spec)
    if modality == "image":
        return _image_verifier(spec, **options)
    if spec == "self":
        if model is None:
            raise ConfigError("the self verifier scores with the generating model; pass model=")
        from ponder.search.verifiers import SelfEvaluation

        return SelfEvaluation(model)
    _check_modality(modality)
    from ponder.modalities.text import verifiers

    key = str(spec).removeprefix("zoo:")
    if key == "exact":
        return verifiers.ExactArithVerifier()
    if key in ("orm", "prm") and not Path(str(spec)).is_dir():
        folder = zoo.folder(key)
        cls = verifiers.OutcomeVerifier if key == "orm" else verifiers.ProcessVerifier
        return cls.from_folder(folder, name=key, **options)
    folder = Path(str(spec))
    if not (folder / "config.json").is_file():
        raise ConfigError(f"unknown verifier {str(spec)!r}; use one of {', '.join(VERIFIER_NAMES)}, "
                          "a comma-separated list of them, or a local verifier folder")
    import json

    archs = json.loads((folder / "config.json").read_text()).get("architectures") or [""]
    if archs[0].endswith("ForTokenClassification"):
        return verifiers.ProcessVerifier.from_folder(folder, name=folder.name, **options)
    if archs[0].endswith("ForSequenceClassification"):
        return verifiers.OutcomeVerifier.from_folder(folder, name=folder.name, **options)
    raise ConfigError(f"verifier folder {str(folder)!r} holds a {archs[0] or 'model of unknown class'}; "
                      "expected a *ForSequenceClassification (outcome) or *ForTokenClassification (process)")


def _image_verifier(spec: str, **options):
    """An image verifier (see `ponder.modalities.image.verifiers.load_image_verifier`); text-only names
    are one clear error."""
    key = spec.removeprefix("zoo:")
    if key in VERIFIER_NAMES and not Path(spec).is_dir():
        raise ConfigError(f"verifier {spec!r} scores text, not images; image verifiers: "
                          f"{', '.join(IMAGE_VERIFIER_NAMES)}, a comma-separated list of them, or a local "
                          "image-classifier or CLIP folder")
    if not Path(spec).is_dir() and key in zoo.ZOO and zoo.entry(key).modality != "image":
        raise ConfigError(f"zoo:{key} is a {zoo.entry(key).modality} {zoo.entry(key).kind}; it cannot score images")
    if not Path(spec).is_dir() and key not in IMAGE_VERIFIER_NAMES and key not in zoo.ZOO:
        raise ConfigError(f"unknown image verifier {spec!r}; use one of {', '.join(IMAGE_VERIFIER_NAMES)}, a "
                          "comma-separated list of them, or a local image-classifier or CLIP folder")
    if key == "clip" and "clip" not in zoo.ZOO:
        raise ConfigError("the clip verifier needs CLIP weights: pass a local CLIPModel folder as the verifier "
                          "(--verifier PATH)")
    from ponder.modalities.image.verifiers import load_image_verifier

    return load_image_verifier(spec, zoo_folder=zoo.folder, **options)


# options every strategy passes through to its decoder (or the step-level machinery)
DECODING_OPTIONS = frozenset({"decoder", "draft", "sampling", "max_new_tokens", "stop", "stream", "step_end",
                              "max_step_tokens"})


def check_options(strategy: str, strategy_fn: Callable, decoder: str, options: dict) -> None:
    """ConfigError naming any option that neither the strategy nor the decoder takes."""
    import inspect

    from ponder.search.decoding import get_decoder

    def named(fn) -> set[str]:
        params = inspect.signature(fn).parameters.values()
        return {p.name for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}

    allowed = named(strategy_fn) - {"model", "prompt", "verifier", "n", "seed"}
    if isinstance(decoder, str):
        allowed |= named(get_decoder(decoder)) - {"model", "prompt_ids", "generators"} - DECODING_OPTIONS
    unknown = sorted(set(options) - allowed - DECODING_OPTIONS)
    if unknown:
        raise ConfigError(f"strategy {strategy!r} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(sorted(allowed)) or 'none'}")


# strategies that run on a `Denoiser` (the rest read tokens or steps of text)
DENOISER_STRATEGIES = ("sample", "best-of-n", "worst-of-n", "noise-random", "noise-zero-order", "noise-paths")


def _check_denoiser_use(model, strategy: str, decoder, draft, calibrate, steps) -> None:
    """ConfigError for options that do not fit the model: token decoders, drafts and calibration on a
    diffusion model; denoising steps or noise search on a token model."""
    from ponder.search.core import Denoiser

    key = strategy.replace("_", "-") if isinstance(strategy, str) else strategy
    if not isinstance(model, Denoiser):
        if steps is not None:
            raise ConfigError("steps (denoising steps) applies to diffusion models; this model decodes tokens")
        if isinstance(key, str) and key.startswith("noise-"):
            raise ConfigError(f"strategy {strategy!r} searches the initial noise of a diffusion model; "
                              f"{getattr(model, 'name', 'this model')} decodes tokens")
        return
    if key not in DENOISER_STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} does not run on a diffusion model; use one of "
                          f"{', '.join(DENOISER_STRATEGIES)}")
    if decoder != "plain":
        raise ConfigError(f"decoder {decoder!r} decodes tokens; a diffusion model denoises (its sampler is set at "
                          "load time, e.g. sampler='ddim')")
    if draft is not None:
        raise ConfigError("a draft model speeds up token decoding; a diffusion model takes none")
    if calibrate is not None:
        raise ConfigError("calibrate draws token samples of the model; it is not available for diffusion models")


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
            and a strategy of `DENOISER_STRATEGIES`.
        lossless: refuse lossy decoders (bild, ead, medusa with acceptance="typical") with a
            ConfigError; ``result.config["lossy"]`` says whether the run's decoder was lossy.
        options: strategy-specific options (e.g. beam_width, weight_temperature, resampling,
            ess_threshold, gibbs_iterations, probe, confidence, abstain_below); an option the
            strategy does not take is an error naming the ones it does.
    Returns:
        `ponder.search.core.Result`.
    """
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.core import Denoiser
    from ponder.search.scaling import get_strategy
    from ponder.search.scaling.common import checked_sampling

    modality = getattr(model, "modality", None)
    if modality not in MODALITIES:
        raise ConfigError(f"generate needs a model from ponder.load(...), got {type(model).__name__}")
    strategy_fn = get_strategy(strategy)
    steps = options.pop("steps", None)
    _check_denoiser_use(model, strategy, decoder, draft, calibrate, steps)
    check_options(strategy, strategy_fn, decoder, options)
    lossy = check_lossless(decoder, options, lossless)
    if steps is not None:
        options["steps"] = steps
    sampling = checked_sampling(SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p))
    if isinstance(verifier, (str, Path)):
        verifier = load_verifier(modality, verifier, model=model)
    if calibrate is not None:
        if not isinstance(calibrate, int) or isinstance(calibrate, bool) or calibrate <= 0:
            raise ConfigError(f"calibrate must be a positive number of reference samples, got {calibrate!r}")
        if verifier is None:
            raise ConfigError("calibrate needs a verifier to calibrate")
        from ponder.search.verifiers import Calibrated

        verifier = Calibrated.against_model(verifier, model, m=calibrate, seed=seed + 1, sampling=sampling,
                                            max_new_tokens=max_new_tokens)
    if isinstance(draft, (str, Path)):
        draft = load(modality, draft)
    auto_choice = None
    if decoder == "auto":
        decoder, draft, auto_choice = _resolve_auto(model, draft, n, sampling, options)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
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
        result = strategy_fn(model, prompt, verifier, n=n, seed=seed, **options)
    else:
        result = strategy_fn(model, prompt, verifier, n=n, seed=seed, decoder=decoder, draft=draft,
                             sampling=sampling, max_new_tokens=max_new_tokens, stop=text_stop(model, stops),
                             stream=token_stream, **options)
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
    result.config["lossy"] = lossy
    if auto_choice is not None:
        result.config["auto"] = auto_choice
    return result


def check_lossless(decoder, options: dict, lossless: bool) -> bool:
    """Whether `decoder` with `options` is lossy; ConfigError when it is and `lossless` was asked."""
    from ponder.search.decoding import DECODERS, LOSSY, LOSSY_OPTIONS, is_lossy

    if not isinstance(decoder, str):
        return False
    lossy = is_lossy(decoder, options)
    if lossy and lossless:
        if decoder not in LOSSY:  # lossless decoder, lossy option
            option, value = LOSSY_OPTIONS[decoder]
            raise ConfigError(f"decoder {decoder!r} with {option}={value!r} is lossy (its output is not distributed "
                              f"as plain sampling's) and --lossless / lossless=True refuses it; drop {option}")
        allowed = [name for name in DECODERS if not is_lossy(name)]
        raise ConfigError(f"decoder {decoder!r} is lossy (its output is not distributed as plain sampling's) and "
                          f"--lossless / lossless=True allows only lossless decoders: {', '.join(allowed)}")
    return lossy


def _resolve_auto(model, draft, n: int, sampling, options: dict):
    """`decoder="auto"`: (decoder, draft, the choice as a dict); pops auto's own options."""
    from ponder.search.decoding import LOSSY
    from ponder.search.decoding.auto import choose, history_path, workload_of

    kind = options.pop("prompt_kind", None)
    choice = choose(workload_of(model, draft, n, sampling, kind), history_path(options.pop("history", None)),
                    sorted(LOSSY))
    options.update(choice.options)
    return choice.decoder, draft if choice.uses_draft else None, choice.to_dict()
