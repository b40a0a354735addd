"""The music modality's registry entry: audio diffusion pipelines, controls as verifiers, WAV outputs.

Controls (`ponder.modalities.music.controls`) are differentiable losses on the output waveform; each is
a verifier (``--verifier melody=ref.wav``, score = -loss) for best-of-N and the noise searches, and
``--control NAME=VALUE`` (repeatable, weighted with ``--control-weight NAME=W``) makes their weighted
sum the objective of any strategy — DITTO and DITTO-2 optimise the initial noise against it.
Registered through the ``ponder.modalities`` entry-point group. Importing this module imports no model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ponder.errors import ConfigError
from ponder.modalities.registry import BenchEntry, ModalitySpec, Option, ZooEntry

ZOO_DIR = Path(__file__).parent / "zoo"
CONTROL_NAMES = ("intensity", "melody", "structure", "inpaint", "outpaint", "loop", "text")


def _load(folder, *, name: str | None = None, **options):
    from ponder.modalities.music import load

    return load(folder, name=name, **options)


def _sample_rate(model) -> int:
    rate = getattr(model, "sample_rate", None)
    if not isinstance(rate, int):
        raise ConfigError("music controls score waveforms at the model's sample rate; pass the loaded model")
    return rate


def _load_verifier(spec: str, *, model=None, clap=None, **options):
    from ponder.modalities.music.controls import parse_control

    if options:
        raise ConfigError(f"music verifiers take no option(s) {', '.join(sorted(options))}")
    if "=" not in spec:
        raise ConfigError(f"a music verifier is a control with its target, NAME=VALUE (e.g. melody=ref.wav, "
                          f"structure=AABA); names: {', '.join(CONTROL_NAMES)}")
    return parse_control(spec, _sample_rate(model), clap=clap)


def _weights(values) -> dict[str, float]:
    """``--control-weight NAME=W`` values (or a mapping from Python) as {name: weight}."""
    if isinstance(values, dict):
        items = list(values.items())
    elif isinstance(values, (list, tuple)):
        items = []
        for value in values:
            name, sep, weight = str(value).partition("=")
            if not sep:
                raise ConfigError(f"--control-weight wants NAME=WEIGHT, got {value!r}")
            items.append((name, weight))
    else:
        raise ConfigError(f"control_weights must be NAME=WEIGHT items or a mapping, got {values!r}")
    out = {}
    for name, weight in items:
        try:
            out[str(name).strip().lower()] = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"control weight {name!r} must be a number, got {weight!r}") from None
    return out


def _controls(values):
    if isinstance(values, str):
        values = [values]
    if isinstance(values, dict):  # Python: {name: value}
        values = [f"{k}={v}" for k, v in values.items()]
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"controls are NAME=VALUE strings (or a {{name: value}} mapping), got {values!r}")
    return list(values)


def _adapt(model, verifier, options: dict) -> tuple[Any, dict]:
    """``controls`` (+ ``control_weights``, ``clap``) become the verifier every strategy scores with."""
    options = dict(options)
    controls = options.pop("controls", None)
    weights = options.pop("control_weights", None)
    clap = options.pop("clap", None)
    if controls is None:
        if weights is not None:
            raise ConfigError("control_weights weigh controls: give the controls too (--control NAME=VALUE)")
        return verifier, options
    if verifier is not None:
        raise ConfigError("give the objective once: as --control NAME=VALUE (the controls' weighted sum) or as "
                          "--verifier, not both")
    from ponder.modalities.music.controls import parse_controls

    return parse_controls(_controls(controls), _weights(weights or {}), _sample_rate(model), clap=clap), options


def _diversity(outputs) -> float:
    """Mean pairwise RMS distance of the candidates' mono waveforms (over their common length)."""
    import torch

    waves = []
    for out in outputs:
        wave = torch.as_tensor(out.waveform).float()
        waves.append(wave.mean(0) if wave.dim() == 2 else wave)  # [T]
    if len(waves) < 2:
        return 0.0
    length = min(int(w.shape[-1]) for w in waves)
    stacked = torch.stack([w[:length] for w in waves])  # [N, T]
    dist = torch.cdist(stacked, stacked) / length ** 0.5  # [N, N] RMS distances
    n = len(waves)
    return float(dist.sum() / (n * (n - 1)))


def _seconds(value):
    from ponder.errors import check_number

    return check_number("seconds", value, minimum=0.0, open_min=True, what="audio length")


def _guidance(value):
    from ponder.errors import check_number

    return check_number("guidance_scale", value, minimum=1.0, what="classifier-free guidance; 1 = off")


def _steps(value):
    from ponder.errors import check_int

    return check_int("steps", value, what="default denoising steps")


SPEC = ModalitySpec(
    name="music",
    summary="diffusers audio pipelines (StableAudio, AudioLDM2): noise search and DITTO with music controls",
    load=_load,
    output_kind="audio",
    verifiers=CONTROL_NAMES,
    default_verifier=None,
    load_verifier=_load_verifier,
    options=(
        Option("seconds", "audio length in seconds (default: the model's)", type=float, check=_seconds),
        Option("guidance_scale", "classifier-free guidance (>= 1; 1 = off)", type=float, check=_guidance),
        Option("sampler", "a deterministic sampler the pipeline fits (default: its own: edm-euler for "
               "StableAudio, ddim for AudioLDM2)"),
        Option("steps", "the loaded model's default denoising steps", type=int, cli=False, check=_steps),
        Option("controls", "NAME=VALUE: intensity=curve.json | melody=ref.wav|notes.json | structure=AABA | "
               "inpaint=ref.wav@1.0-2.5 | outpaint=ref.wav@2.0 | loop=0.5 | text=WORDS (with --clap); repeatable; "
               "their weighted sum is the objective", stage="generate", flag="--control", metavar="NAME=VALUE",
               repeat=True, check=_controls),
        Option("control_weights", "NAME=W: the weight of a control (default 1); repeatable", stage="generate",
               flag="--control-weight", metavar="NAME=W", repeat=True, check=_weights),
        Option("clap", "a local ClapModel folder (with its processor) for the text control", stage="generate",
               flag="--clap", metavar="FOLDER"),
    ),
    examples=("pluck, high, fast", "saw, low, slow"),
    zoo=(
        ZooEntry("tones", "music", "model", "UNet1DModel mel diffusion on procedural tones, tag prompts "
                 "(PonderMelDiffusion folder; Griffin-Lim decode)", recipe="ponder.modalities.music.train",
                 root=ZOO_DIR, student="tones-student"),
        ZooEntry("tones-student", "music", "draft", "one-step student of tones (direct distillation of its 20-step "
                 "guided DDIM): DITTO-2's default surrogate", recipe="ponder.modalities.music.train_student",
                 root=ZOO_DIR),
        ZooEntry("tones-cm", "music", "draft", "one-step consistency-distilled student of tones (the DITTO-2 paper's "
                 "kind; weaker than tones-student on this budget)", recipe="ponder.modalities.music.train_cm",
                 root=ZOO_DIR),
        ZooEntry("tones-clap", "music", "verifier", "tiny ClapModel on tag text and tones clips (--clap for the "
                 "text control)", recipe="ponder.modalities.music.train_clap", root=ZOO_DIR),
        ZooEntry("tones-judge", "music", "verifier", "ASTForAudioClassification tag judge on a disjoint half: bench "
                 "only, never used by search", recipe="ponder.modalities.music.train_judge", root=ZOO_DIR),
    ),
    option_hint="{opt_steps: 20, lr: 0.05} or {controls: [structure=AABA]}",
    benches={"music": BenchEntry("zoo:tones DITTO / DITTO-2 / random search on held-out intensity, melody, structure, "
                                 "inpaint and CLAP targets (control loss vs wall time and backward passes; PNG)",
                                 "ponder.bench.music:run")},
    diversity=_diversity,
    adapt=_adapt,
    order=30,
)
