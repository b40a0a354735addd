"""One generation request, validated once, by every surface.

The CLI builds a `Request` from its flags, a render job from each item, the demo from its form, and
`ponder.generate` checks its keywords through the same `check_generate`; so a bad value gets the
same one-line error wherever it comes from, before any model loads. What needs the model (class
names, sizes against the VAE factor, a prompt's length against the context, steps on a token model)
is checked when it loads, each still one clear error.

    req = Request(modality="text", model="zoo:arith", prompt="Q: 1+2\\n", strategy="best-of-n", n=4,
                  verifier="exact").validate()
    model = ponder.load(req.modality, req.model, **req.load_options)
    ponder.generate(model, req.prompt, **req.generate_kwargs())
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError, check_int, check_number
from ponder.modalities import registry

# keywords every strategy passes through to its decoder (or the step-level machinery)
DECODING_OPTIONS = frozenset({"decoder", "draft", "sampling", "max_new_tokens", "stop", "stream", "step_end",
                              "max_step_tokens"})
# load options every modality's loader takes (the rest are a modality's own, from its spec)
COMMON_LOAD_OPTIONS = frozenset({"trust_remote_code", "dtype", "device"})


@dataclass
class Request:
    """Everything one `ponder generate` needs, as plain values (JSON-serialisable).

    `options` holds the strategy's and the decoder's own options and the modality's generate
    options; `load_options` what `ponder.load` takes beyond the folder (the modality's load options).
    """

    modality: str
    model: str
    prompt: Any
    strategy: str = "sample"
    n: int = 1
    verifier: str | None = None
    decoder: str = "plain"
    draft: str | None = None
    seed: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    calibrate: int | None = None
    steps: int | None = None
    lossless: bool = False
    guide: str | None = None
    context: str | None = None
    guide_options: dict = field(default_factory=dict)
    load_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def validate(self) -> Request:
        """Check every field against the registries without loading a model; returns self.

        Raises:
            ConfigError: one line naming the field, the bad value and what is allowed.
        """
        spec = registry.get(self.modality)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model must be zoo:NAME or a local model folder, got {self.model!r}")
        if self.model.startswith("zoo:"):
            check_zoo_model(self.model, spec.name)
        if not isinstance(self.prompt, str) or not self.prompt:
            raise ConfigError(f"prompt must be non-empty text, got {self.prompt!r}")
        check_int("seed", self.seed, minimum=None)
        if self.stop is not None and (isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop)):
            raise ConfigError(f"stop must be a list of strings, got {self.stop!r}")
        check_generate(spec, strategy=self.strategy, n=self.n, decoder=self.decoder, temperature=self.temperature,
                       top_k=self.top_k, top_p=self.top_p, min_p=self.min_p, max_new_tokens=self.max_new_tokens,
                       calibrate=self.calibrate, has_verifier=self.verifier is not None, steps=self.steps,
                       lossless=self.lossless, options=self.options)
        check_guide(self.guide, self.context, self.guide_options)
        if self.verifier is not None:
            check_verifier_spec(spec, self.verifier)
        if self.draft is not None:
            if not isinstance(self.draft, str) or not self.draft.strip():
                raise ConfigError(f"draft must be a model spec (zoo:NAME or a folder), got {self.draft!r}")
            if self.draft.startswith("zoo:"):
                check_zoo_model(self.draft, spec.name)
        self.load_options = check_load_options(spec, self.load_options)
        return self

    def generate_kwargs(self) -> dict:
        """The keywords of `ponder.generate` (besides the model and the prompt)."""
        out = {k: v for k, v in asdict(self).items()
               if k not in ("modality", "model", "prompt", "load_options", "options", "steps")}
        if self.steps is not None:
            out["steps"] = self.steps
        return {**out, **self.options}

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the checks, shared with ponder.generate --------------------------------------------------------


def check_zoo_model(spec: str, modality: str) -> None:
    """A ``zoo:NAME`` that names a model (or draft) of `modality`; ZooError / ConfigError otherwise."""
    from ponder import zoo

    entry = zoo.entry(spec)
    if entry.modality != modality or entry.kind not in ("model", "draft"):
        raise ConfigError(f"zoo:{entry.name} is {_a(entry.modality)} {entry.kind}, not {_a(modality)} model")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def named_parameters(fn: Callable) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}


def check_options(strategy: str, strategy_fn: Callable, decoder: Any, options: dict, spec=None) -> None:
    """ConfigError naming any option that neither the strategy, the decoder nor the modality takes.

    An option another modality takes is named as theirs (``--size`` belongs to image, not text)."""
    from ponder.search.decoding import get_decoder

    allowed = named_parameters(strategy_fn) - {"model", "prompt", "verifier", "n", "seed"}
    if isinstance(decoder, str):
        allowed |= named_parameters(get_decoder(decoder)) - {"model", "prompt_ids", "generators"} - DECODING_OPTIONS
    own = spec.keywords_at("generate") if spec is not None else set()
    unknown = sorted(set(options) - allowed - DECODING_OPTIONS - own)
    for name in unknown:
        others = [m for m in registry.owners(name) if spec is None or m != spec.name]
        if others:
            raise ConfigError(f"option {name!r} belongs to {' and '.join(others)} models, not "
                              f"{spec.name if spec is not None else 'this one'}")
    if unknown:
        raise ConfigError(f"strategy {strategy!r} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(sorted(allowed | own)) or 'none'}")


def check_lossless(decoder: Any, options: dict, lossless: bool) -> bool:
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


def check_sampling(temperature: Any, top_k: Any, top_p: Any, min_p: Any):
    """The sampling settings as `SamplingParams`; one ConfigError naming a bad one."""
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.scaling.common import checked_sampling

    check_number("temperature", temperature, minimum=0.0, what="0 = greedy")
    check_int("top_k", top_k, minimum=0, what="0 = off")
    check_number("top_p", top_p, minimum=0.0, maximum=1.0, open_min=True, what="1 = off")
    check_number("min_p", min_p, minimum=0.0, maximum=1.0, what="0 = off")
    return checked_sampling(SamplingParams(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                           min_p=float(min_p)))


def check_generate(spec, *, strategy: Any, n: Any, decoder: Any, temperature: Any = 1.0, top_k: Any = 0,
                   top_p: Any = 1.0, min_p: Any = 0.0, max_new_tokens: Any = 64, calibrate: Any = None,
                   has_verifier: bool = False, steps: Any = None, lossless: bool = False,
                   options: dict | None = None) -> tuple[Callable, bool]:
    """Every check of a generation that needs no model; returns (the strategy function, lossy?)."""
    from ponder.search.decoding import get_decoder
    from ponder.search.scaling import get_strategy

    if not isinstance(strategy, str) and not callable(strategy):
        raise ConfigError(f"strategy must be a strategy name, got {strategy!r}")
    strategy_fn = get_strategy(strategy) if isinstance(strategy, str) else strategy
    check_int("n", n, what="number of candidates")
    if isinstance(decoder, str):
        get_decoder(decoder)
    check_sampling(temperature, top_k, top_p, min_p)
    check_int("max_new_tokens", max_new_tokens)
    if steps is not None:
        check_int("steps", steps, what="denoising steps")
    if calibrate is not None:
        check_int("calibrate", calibrate, what="reference samples")
        if not has_verifier:
            raise ConfigError("calibrate needs a verifier to calibrate")
    options = dict(options or {})
    check_options(strategy if isinstance(strategy, str) else getattr(strategy, "__name__", "custom"), strategy_fn,
                  decoder, options, spec)
    for option in spec.options_at("generate"):
        if option.name in options:
            options[option.name] = option.checked(options[option.name])
    return strategy_fn, check_lossless(decoder, options, lossless)


def check_guide(guide: Any, context: Any, guide_options: Any) -> Callable | None:
    """The guide function `guide` names (None without one), its options checked by name; a
    ConfigError naming the bad value otherwise."""
    from ponder.search.guides import get_guide

    if guide is None:
        if context is not None or guide_options:
            raise ConfigError("context and guide options need a guide: pass guide='cad' (--guide cad)")
        return None
    if not isinstance(guide, str):
        raise ConfigError(f"guide must be a guide's name, got {guide!r}")
    fn = get_guide(guide)
    if context is not None and not isinstance(context, str):
        raise ConfigError(f"context must be text, got {type(context).__name__}")
    if not isinstance(guide_options, dict):
        raise ConfigError(f"guide options must be a mapping of option names to values, got {guide_options!r}")
    allowed = sorted(set(named_parameters(fn)) - {"model", "context"})
    unknown = sorted(set(guide_options) - set(allowed))
    if unknown:
        raise ConfigError(f"guide {guide!r} takes options {', '.join(allowed) or 'none'}; got {', '.join(unknown)}")
    return fn


def check_load_options(spec, options: dict | None) -> dict:
    """The load options of modality `spec`, each checked; an option of another modality is named as
    theirs, an unknown one lists what the modality takes."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    own = spec.keywords_at("load") | COMMON_LOAD_OPTIONS
    for name, value in options.items():
        if name not in own:
            others = [m for m in registry.owners(name, "load") if m != spec.name]
            if others:
                raise ConfigError(f"load option {name!r} belongs to {' and '.join(others)} models, not {spec.name}")
            raise ConfigError(f"{spec.name} models do not take load option {name!r}; they take: "
                              f"{', '.join(sorted(own))}")
        option = next((o for o in spec.options_at("load") if o.name == name), None)
        if option is not None:
            options[name] = option.checked(value)
    return options


def verifier_parts(spec, verifier: str) -> list[str]:
    """The names a verifier spec stands for: ``ensemble`` -> the modality's ensemble, ``a,b`` -> [a, b]."""
    if verifier == "ensemble":
        return list(spec.ensemble)
    if "," in verifier and not Path(verifier).exists():
        return [p.strip() for p in _top_level_split(verifier) if p.strip()]
    return [verifier]


def _top_level_split(text: str) -> list[str]:
    """`text` split at commas outside brackets: ``melody=[60,62],loop=0.5`` -> two parts."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def looks_like_path(text: str) -> bool:
    return "/" in text or text.startswith((".", "~")) or Path(text).exists()


def check_verifier_spec(spec, verifier: Any) -> None:
    """A verifier is a name of the modality, a comma list of them, ``zoo:NAME`` of a verifier of the
    modality, or a folder (checked when it loads)."""
    if not isinstance(verifier, str) or not verifier.strip():
        raise ConfigError(f"verifier must be a verifier name or folder, got {verifier!r}")
    parts = verifier_parts(spec, verifier)
    if not parts:
        raise ConfigError(f"verifier {verifier!r} names no verifier")
    for part in parts:
        check_verifier_name(spec, part)


def check_verifier_name(spec, part: str) -> None:
    """One verifier name or folder against modality `spec` (no model is loaded)."""
    from ponder import zoo

    bare = part.removeprefix("zoo:")
    if bare in spec.verifiers or bare.partition("=")[0] in spec.verifiers or looks_like_path(part):
        return  # a name, NAME=VALUE (a verifier with its target, e.g. a music control), or a folder
    owners = [s for s in registry.specs().values() if s.name != spec.name and bare in s.verifiers]
    if owners:
        raise ConfigError(f"verifier {part!r} scores {owners[0].kind.many}, not {spec.kind.many}; "
                          f"{spec.name} verifiers: {', '.join(spec.verifiers) or 'none'}, a comma-separated list of "
                          "them, or a local verifier folder")
    table = zoo.ZOO
    if bare in table:
        entry = table[bare]
        if entry.modality == spec.name and entry.kind == "verifier":
            return
        raise ConfigError(f"zoo:{bare} is {_a(entry.modality)} {entry.kind}; it cannot score "
                          f"{spec.kind.many}")
    raise ConfigError(f"unknown {spec.name} verifier {part!r}; use one of {', '.join(spec.verifiers) or 'none'}, "
                      "a comma-separated list of them, or a local verifier folder (a path)")


def as_stops(stop: Sequence[str] | str | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


# fields of `Request` a job item or the demo form carries inside its `options` mapping
REQUEST_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "max_new_tokens", "stop", "draft", "calibrate", "steps",
                   "lossless", "guide", "context", "guide_options")


def request_from_item(item: dict) -> Request:
    """The `Request` of a job item (its fields, with `options` split into request fields, the
    modality's load options and strategy / decoder options); not yet validated."""
    spec = registry.get(item.get("modality"))
    options = dict(item.get("options") or {})
    fields = {k: options.pop(k) for k in REQUEST_OPTIONS if k in options}
    if "stop" in fields:
        fields["stop"] = as_stops(fields["stop"]) if isinstance(fields["stop"], (str, list)) else fields["stop"]
    load_keys = spec.keywords_at("load") | COMMON_LOAD_OPTIONS
    load_options = {k: options.pop(k) for k in list(options) if k in load_keys}
    return Request(modality=spec.name, model=item.get("model"), prompt=item.get("prompt"),
                   strategy=item.get("strategy") or "sample", n=item.get("n", 1), verifier=item.get("verifier"),
                   decoder=item.get("decoder") or "plain", seed=item.get("seed", 0), load_options=load_options,
                   options=options, **fields)
