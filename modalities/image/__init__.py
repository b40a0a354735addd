"""Images: a `Denoiser` over diffusers pipelines (noise search), image verifiers, and the digits zoo.

`load(folder)` dispatches on the folder: a diffusers pipeline (``model_index.json``) becomes a
`DiffusersDenoiser`; anything else goes to the autoregressive image-token loader (`ar.load_ar`).
"""

from __future__ import annotations

from pathlib import Path

from ponder.errors import ConfigError, ModelLoadError

__all__ = ["load"]


def load(folder, *, name: str | None = None, **options):
    """Load an image model from a local folder.

    Args:
        folder: a diffusers pipeline folder (see `ponder.modalities.image.denoiser`), or an
            autoregressive image-token model folder.
        name: what results call the model.
        options: for diffusion: sampler, guidance_scale, height, width, steps, dtype, device; for AR
            models: what `ar.load_ar` takes.
    Returns:
        A `DiffusersDenoiser` (diffusion) or a `SequenceModel` whose decode gives a PIL image (AR).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"image model folder {str(folder)!r} does not exist")
    options = {k: v for k, v in options.items() if v is not None}
    if (folder / "model_index.json").is_file():
        from ponder.modalities.image.denoiser import LOAD_OPTIONS, DiffusersDenoiser

        options.pop("trust_remote_code", None)  # pipelines load diffusers' own classes only
        unknown = sorted(set(options) - set(LOAD_OPTIONS))
        if unknown:
            raise ConfigError(f"diffusion image models do not take option(s) {', '.join(unknown)}; they take: "
                              f"{', '.join(LOAD_OPTIONS)}")
        return DiffusersDenoiser.from_folder(folder, name=name, **options)
    try:
        from ponder.modalities.image.ar import load_ar
    except ImportError:
        raise ModelLoadError(f"{str(folder)!r} is not a diffusers pipeline folder (no model_index.json), and "
                             "autoregressive image models are not available in this install") from None
    return load_ar(folder, name=name or str(folder), **options)
