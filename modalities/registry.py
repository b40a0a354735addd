"""The modality registry: each modality is one folder that exports one `ModalitySpec`.

A spec says everything a surface (API, CLI, jobs, zoo, bench, demo) needs to know about a modality,
so no surface names one: how a model folder loads, which verifiers score its outputs, its load and
generate options (and the CLI flags they become), example prompts, the *kind* of its outputs (a
plain value such as ``"text"``, ``"image"`` or ``"audio"``; the demo maps kinds to widgets), how an
output becomes a file, how the diversity of a set of candidates is measured, the zoo models it
ships and the zoo tasks it can sample.

Modalities register through the entry-point group ``ponder.modalities``; ponder's own do it the same
way in its pyproject.toml, so a separate package adds a modality with one line in its own::

    [project.entry-points."ponder.modalities"]
    tones = "my_package.tones:SPEC"        # a ModalitySpec

`get(name)` is the spec of one modality (one ConfigError listing the registered ones for an unknown
name); `specs()` all of them, loaded once. Importing this module imports no model code: each
modality's loader and verifiers are imported when first used.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ponder.errors import ConfigError, ZooError

ENTRY_POINT_GROUP = "ponder.modalities"


# ---- outputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputKind:
    """One kind of output: how it is recognised, written to a file and described in one line.

    `name` is the plain value a modality declares and the demo maps to a widget ("text", "image",
    "audio"; any other kind is shown by its `describe` line and offered as its file).
    """

    name: str
    suffix: str  # file suffix, with the dot
    accepts: Callable[[Any], bool]
    encode: Callable[[Any], bytes]
    describe: Callable[[Any], str] | None = None  # one line for tables and JSON (default: the JSON form)
    plural: str = ""  # for messages ("scores images"); default: name + "s"

    @property
    def many(self) -> str:
        return self.plural or self.name + "s"

    def line(self, output: Any) -> str:
        if self.describe is not None:
            return self.describe(output)
        return output if isinstance(output, str) else json.dumps(_jsonable(output))


def _jsonable(value: Any) -> Any:
    from ponder.search.core import to_jsonable

    return to_jsonable(value)


def _is_image(output: Any) -> bool:  # a PIL image, without importing PIL
    return all(hasattr(output, a) for a in ("save", "mode", "size", "tobytes"))


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # no timestamps: the same pixels give the same bytes
    return buffer.getvalue()


def _describe_image(image: Any) -> str:
    import hashlib

    digest = hashlib.sha256(image.tobytes()).hexdigest()[:12]  # a re-render can be checked byte for byte
    return f"<image {image.width}x{image.height} {image.mode} sha256:{digest}>"


def _is_audio(output: Any) -> bool:
    from ponder.search.core.outputs import AudioOutput

    return isinstance(output, AudioOutput)


def _wav(audio: Any) -> bytes:
    """16-bit PCM WAV of a waveform in [-1, 1], shaped [samples] or [channels, samples]."""
    import wave

    pcm = pcm16(audio)  # [C, T]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(int(audio.sample_rate))
        w.writeframes(pcm.T.tobytes())  # interleaved frames: [T, C]
    return buffer.getvalue()


def pcm16(audio: Any):
    """The waveform as the 16-bit PCM samples its WAV file holds: [C, T] int16."""
    import numpy as np

    from ponder.errors import InputError

    samples = audio.waveform
    if hasattr(samples, "detach"):
        samples = samples.detach().float().cpu().numpy()
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[None, :]
    if samples.ndim != 2:
        raise InputError(f"audio waveform must be [samples] or [channels, samples], got shape {samples.shape}")
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")  # [C, T]


def _describe_audio(audio: Any) -> str:
    import hashlib

    pcm = pcm16(audio)  # the digest of what the file holds, as an image's is of its 8-bit pixels
    digest = hashlib.sha256(pcm.tobytes()).hexdigest()[:12]
    return f"<audio {pcm.shape[-1] / audio.sample_rate:.2f}s {audio.sample_rate} Hz sha256:{digest}>"


def _is_token_ids(output: Any) -> bool:
    return isinstance(output, (list, tuple)) and all(isinstance(t, int) for t in output)


TEXT = OutputKind("text", ".txt", lambda o: isinstance(o, str), lambda o: o.encode("utf-8"), lambda o: o, plural="text")
IMAGE = OutputKind("image", ".png", _is_image, _png, _describe_image)
AUDIO = OutputKind("audio", ".wav", _is_audio, _wav, _describe_audio, plural="audio")
TOKENS = OutputKind("tokens", ".json", _is_token_ids, lambda o: (json.dumps(list(o)) + "\n").encode())
OUTPUT_KINDS: dict[str, OutputKind] = {k.name: k for k in (TEXT, IMAGE, AUDIO, TOKENS)}


# ---- options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One load or generate option of a modality, and the CLI flag it becomes.

    `stage` says where the value goes: ``"load"`` (a keyword of `ponder.load`) or ``"generate"`` (a
    keyword of `ponder.generate`, passed to the strategy). `parse` turns the CLI's text into the
    keywords it stands for (``--size 32x32`` -> ``{"height": 32, "width": 32}``; default: the value,
    read by `type`, under `name`). `check` validates a value given from Python or a job file and
    returns it (raising one ConfigError naming the value and what is allowed).
    """

    name: str
    help: str
    stage: str = "load"  # "load" | "generate"
    type: Callable[[str], Any] = str
    flag: str | None = None  # default: --name-with-dashes
    metavar: str | None = None
    keywords: tuple[str, ...] = ()  # the keywords `parse` produces (default: (name,))
    parse: Callable[[str], dict] | None = None
    check: Callable[[Any], Any] | None = None
    cli: bool = True  # False: a keyword of Python and job files only (no CLI flag)
    repeat: bool = False  # the flag may be given several times; the keyword gets the list of values

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def names(self) -> tuple[str, ...]:
        """The keywords this option stands for in `ponder.load` / `ponder.generate`."""
        return self.keywords or (self.name,)

    def from_cli(self, text: str | list[str]) -> dict:
        if self.repeat:  # every value as given; `check` sees the whole list
            return {self.name: self.checked(list(text))}
        if self.parse is not None:
            return self.parse(text)
        try:
            value = self.type(text)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.cli_flag} wants a {getattr(self.type, '__name__', 'value')}, "
                              f"got {text!r}") from None
        return {self.name: self.checked(value)}

    def checked(self, value: Any) -> Any:
        return self.check(value) if self.check is not None else value


# ---- zoo ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model (or rule) a modality ships: its weights folder, card and recipe."""

    name: str
    modality: str
    kind: str  # "model" | "draft" | "verifier"
    summary: str
    recipe: str | None = None  # module whose `train(name, out_dir, log=, steps=, smoke=) -> card` rebuilds it
    root: Path | None = None  # the modality's zoo folder; None for a rule with no weights (e.g. zoo:exact)
    student: str | None = None  # the zoo name of this model's one-step student (DITTO-2's default surrogate)

    @property
    def has_weights(self) -> bool:
        return self.root is not None

    @property
    def folder(self) -> Path:
        """Where the shipped weights live (inside the installed package)."""
        if self.root is None:
            raise ZooError(f"zoo:{self.name} is a rule, not a model; it has no weights folder")
        return self.root / self.name

    @property
    def built(self) -> bool:
        if self.root is None:
            return True  # a rule is always ready
        # transformers folders have a root config.json, diffusers pipeline folders a model_index.json
        return (self.folder / "config.json").is_file() or (self.folder / "model_index.json").is_file()

    def weights(self) -> Path:
        """The weights folder, checked to be built (one ZooError saying how to build it otherwise)."""
        if self.root is None:
            raise ZooError(f"zoo:{self.name} is a rule, not a model; use it by name (e.g. --verifier {self.name})")
        if not self.built:
            raise ZooError(f"zoo model {self.name!r} has no weights at {self.folder}; build them with "
                           f"`ponder zoo train {self.name}`")
        return self.folder

    def card(self) -> dict:
        if self.root is None:
            return {}
        path = self.folder / "card.json"
        return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class BenchEntry:
    """A benchmark a modality adds to `ponder bench`: ``run(quick=, plot_dir=) -> {"rows", "goals"}``."""

    summary: str
    run: str  # "module:function", imported when the bench runs


# ---- the spec -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModalitySpec:
    """Everything the surfaces need to know about one modality.

    Attributes:
        name: the modality's name (``ponder generate NAME``, ``ponder.load(NAME, ...)``).
        summary: one line for help texts.
        load: ``load(folder, *, name, **options) -> model``; the model carries ``modality = name``.
        output_kind: a key of `OUTPUT_KINDS` or an `OutputKind` of the modality's own.
        verifiers: verifier names `load_verifier` knows (a local folder is always allowed too).
        default_verifier: the verifier the demo preselects (None: no verifier).
        ensemble: the names ``--verifier ensemble`` stands for.
        load_verifier: ``load_verifier(spec, *, model, **options) -> Verifier`` for one name or folder
            (comma lists and ``ensemble`` are combined by the API).
        options: load and generate options with their CLI flags.
        examples: example prompts (the demo's).
        option_hint: an example of free-form strategy / decoder options, for the demo.
        diversity: ``diversity(outputs) -> float`` over a set of candidates' outputs, recorded as
            ``result.config["diversity"]`` (None: not measured).
        zoo: the zoo models and rules the modality ships.
        tasks: zoo tasks `ponder zoo sample NAME` can draw from: ``task(split=, count=, seed=,
            **options) -> [{"prompt", "answer", "solution", "split"}]``.
        benches: benchmarks the modality adds to `ponder bench`.
        adapt: ``adapt(model, verifier, options) -> (verifier, options)``, called by `ponder.generate`
            after the model loads: turns the modality's own generate options into what strategies take
            (e.g. music's ``controls`` become the verifier DITTO optimises). None: options pass as they are.
        order: where lists, help texts and demo tabs put the modality (lower first, then by name).
    """

    name: str
    summary: str
    load: Callable[..., Any]
    output_kind: str | OutputKind = "text"
    verifiers: tuple[str, ...] = ()
    default_verifier: str | None = None
    ensemble: tuple[str, ...] = ()
    load_verifier: Callable[..., Any] | None = None
    options: tuple[Option, ...] = ()
    examples: tuple[str, ...] = ()
    option_hint: str = "{beam_width: 2}"
    diversity: Callable[[Sequence[Any]], float] | None = None
    zoo: tuple[ZooEntry, ...] = ()
    tasks: Mapping[str, Callable[..., list[dict]]] = field(default_factory=dict)
    benches: Mapping[str, BenchEntry] = field(default_factory=dict)
    order: int = 100  # where lists, help and demo tabs put it (lower first; ties by name)
    adapt: Callable[[Any, Any, dict], tuple[Any, dict]] | None = None

    @property
    def kind(self) -> OutputKind:
        """The `OutputKind` of this modality's outputs."""
        if isinstance(self.output_kind, OutputKind):
            return self.output_kind
        if self.output_kind not in OUTPUT_KINDS:
            raise ConfigError(f"modality {self.name!r} declares output kind {self.output_kind!r}; known kinds: "
                              f"{', '.join(OUTPUT_KINDS)} (or pass an OutputKind)")
        return OUTPUT_KINDS[self.output_kind]

    def options_at(self, stage: str) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.stage == stage)

    def keywords_at(self, stage: str) -> set[str]:
        """Every keyword the options of `stage` stand for."""
        return {k for o in self.options_at(stage) for k in o.names}


# ---- discovery ------------------------------------------------------------------------------------


@cache
def specs() -> dict[str, ModalitySpec]:
    """Every registered modality, by name, ordered by their `order` and then by name."""
    from importlib.metadata import entry_points

    found: dict[str, ModalitySpec] = {}
    points = entry_points(group=ENTRY_POINT_GROUP)
    for point in points:
        try:
            spec = point.load()
        except Exception as err:  # a broken plug-in must not take the others down; it is named on use
            raise ConfigError(f"modality {point.name!r} (entry point {point.value!r}) failed to load: "
                              f"{type(err).__name__}: {err}") from err
        if not isinstance(spec, ModalitySpec):
            raise ConfigError(f"entry point {point.name!r} = {point.value!r} of group {ENTRY_POINT_GROUP!r} is a "
                              f"{type(spec).__name__}, not a ponder.modalities.registry.ModalitySpec")
        if spec.name != point.name:
            raise ConfigError(f"entry point {point.name!r} names modality {spec.name!r}; the two must match")
        if spec.name in found:
            continue  # the same modality installed twice (e.g. an editable and a regular install)
        found[spec.name] = spec
    found = dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))  # never by install order
    if not found:
        raise ConfigError(f"no modality is registered (entry-point group {ENTRY_POINT_GROUP!r}); is ponder "
                          "installed? Run `pip install -e .` in the repository")
    return found


def names() -> list[str]:
    return list(specs())


def get(name: Any) -> ModalitySpec:
    """The spec of modality `name`; one ConfigError listing the registered modalities otherwise."""
    table = specs()
    if not isinstance(name, str) or name not in table:
        raise ConfigError(f"unknown modality {name!r}; registered: {', '.join(table)}")
    return table[name]


def of_model(model: Any) -> ModalitySpec:
    """The spec of the modality a loaded model belongs to (its ``modality`` attribute)."""
    name = getattr(model, "modality", None)
    if not isinstance(name, str) or name not in specs():
        raise ConfigError(f"generate needs a model from ponder.load(...), got {type(model).__name__}"
                          + (f" of unregistered modality {name!r}" if isinstance(name, str) else ""))
    return specs()[name]


def owners(keyword: str, stage: str | None = None) -> list[str]:
    """The modalities whose options (of `stage`, or any) take `keyword`."""
    return [s.name for s in specs().values()
            if keyword in (s.keywords_at(stage) if stage else s.keywords_at("load") | s.keywords_at("generate"))]


def kind_of(output: Any) -> OutputKind:
    """The `OutputKind` an output is, by what it is (a modality's own kinds first)."""
    own = [s.output_kind for s in specs().values() if isinstance(s.output_kind, OutputKind)]
    for kind in [*own, *OUTPUT_KINDS.values()]:
        if kind.accepts(output):
            return kind
    from ponder.errors import InputError

    raise InputError(f"no file encoder for an output of type {type(output).__name__}; "
                     f"known kinds: {', '.join([k.name for k in own] + list(OUTPUT_KINDS))}")


def zoo_entries() -> dict[str, ZooEntry]:
    """Every zoo entry of every registered modality, by name."""
    table: dict[str, ZooEntry] = {}
    for spec in specs().values():
        for entry in spec.zoo:
            if entry.name in table:
                raise ConfigError(f"zoo name {entry.name!r} is registered by both {table[entry.name].modality!r} "
                                  f"and {entry.modality!r}")
            table[entry.name] = entry
    return table


def cache_clear() -> None:
    """Forget the discovered modalities (after installing a plug-in in the same process; tests)."""
    specs.cache_clear()
