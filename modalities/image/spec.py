"""The image modality's registry entry: diffusers pipelines (noise search), autoregressive image-token
models (SJD), the image verifiers and the digits zoo.

Registered through the ``ponder.modalities`` entry-point group (see `ponder.modalities.registry`).
Importing this module imports no model code.
"""

from __future__ import annotations

from pathlib import Path

from ponder.errors import ConfigError
from ponder.modalities.registry import ModalitySpec, Option, ZooEntry

ZOO_DIR = Path(__file__).parent / "zoo"
SAMPLERS = ("ddim", "euler", "euler-karras", "flow")


def _load(folder, *, name: str | None = None, **options):
    from ponder.modalities.image import load

    return load(folder, name=name, **options)


def _load_verifier(spec: str, *, model=None, **options):
    from ponder.modalities.image.verifiers import load_image_verifier

    key = str(spec).removeprefix("zoo:")
    if key == "clip" and not Path(str(spec)).is_dir() and "clip" not in _ZOO:
        raise ConfigError("the clip verifier needs CLIP weights: pass a local CLIPModel folder as the verifier "
                          "(--verifier PATH)")
    return load_image_verifier(str(spec), zoo_folder=_zoo_folder, **options)


def _zoo_folder(name: str) -> Path:
    key = name.removeprefix("zoo:")
    if key not in _ZOO:
        raise ConfigError(f"unknown image verifier {name!r}; the image zoo has: {', '.join(_ZOO)}")
    return _ZOO[key].weights()


def _diversity(outputs) -> float:
    from ponder.modalities.image.diversity import pixel_diversity

    return pixel_diversity(outputs)


def _size(text: str) -> dict:
    """``--size 32x24`` (height x width) or ``--size 32`` (square), in pixels."""
    height, sep, width = str(text).lower().partition("x")
    try:
        size = {"height": int(height), "width": int(width) if sep else int(height)}
    except ValueError:
        raise ConfigError(f"--size wants HEIGHTxWIDTH or one number of pixels, got {text!r}") from None
    for key, value in size.items():
        if value <= 0:
            raise ConfigError(f"--size: {key} must be a positive number of pixels, got {value}")
    return size


def _sampler(value):
    if value not in SAMPLERS:
        raise ConfigError(f"sampler {value!r} is not allowed; use one of {', '.join(SAMPLERS)}")
    return value


def _guidance(value):
    from ponder.errors import check_number

    return check_number("guidance_scale", value, minimum=1.0, what="classifier-free guidance; 1 = off")


def _default_steps(value):
    from ponder.errors import check_int

    return check_int("steps", value, what="default denoising steps")


def _zoo(name: str, kind: str, summary: str, recipe: str, student: str | None = None) -> ZooEntry:
    return ZooEntry(name, "image", kind, summary, recipe=recipe, root=ZOO_DIR, student=student)


_TRAIN = "ponder.modalities.image.train"
_ENTRIES = (
    _zoo("digits", "model", "class-conditional UNet2DModel + DDIM (diffusers folder) on 16x16 digits", _TRAIN,
         student="digits-student"),
    _zoo("digits-classifier", "verifier", "ViTForImageClassification on digits: the search verifier", _TRAIN),
    _zoo("digits-judge", "verifier", "ResNetForImageClassification on disjoint digits: bench judge only, never "
         "used by search", _TRAIN),
    _zoo("digits-student", "draft", "one-step student of digits (direct distillation of its 10-step DDIM): DITTO-2's "
         "surrogate", "ponder.modalities.image.train_student"),
    _zoo("digits-ar", "model", "LlamaForCausalLM over a k-means codebook of 2x2 digit patches (64 tokens per "
         "16x16 image), class token as prompt", "ponder.modalities.image.train_ar"),
)
_ZOO = {e.name: e for e in _ENTRIES}

SPEC = ModalitySpec(
    name="image",
    summary="diffusers pipeline folders (noise search) and autoregressive image-token models (SJD)",
    load=_load,
    output_kind="image",
    verifiers=("classifier", "clip", "aesthetic", "ensemble"),
    default_verifier="classifier",
    ensemble=("classifier", "aesthetic"),
    load_verifier=_load_verifier,
    options=(
        Option("size", "image size in pixels, e.g. 32x32 or 32 (default: the model's; must be a multiple of its "
               "VAE / network factor)", metavar="HxW", keywords=("height", "width"), parse=_size),
        Option("guidance_scale", "classifier-free guidance (>= 1; 1 = off)", type=float, check=_guidance),
        Option("sampler", f"{' | '.join(SAMPLERS)} (default: the scheduler's kind)", check=_sampler),
        Option("steps", "the loaded diffusion model's default denoising steps (generate's steps= overrides it)",
               type=int, cli=False, check=_default_steps),
    ),
    examples=("7", "3", "0"),
    option_hint="{steps: 10} or {step_size: 0.5}",
    diversity=_diversity,
    zoo=_ENTRIES,
    order=20,
)
