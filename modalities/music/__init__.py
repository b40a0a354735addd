"""Music: audio diffusion models (StableAudio, AudioLDM2 pipelines), differentiable controls and the tones
data generator.

The registry entry is `ponder.modalities.music.spec.SPEC`. `load(folder)` reads a diffusers audio
pipeline folder into an `AudioDenoiser` whose outputs are `ponder.search.core.Audio`.
"""

from __future__ import annotations

__all__ = ["load"]


def load(folder, *, name: str | None = None, **options):
    """Load an audio diffusion pipeline folder (see `ponder.modalities.music.denoiser.AudioDenoiser`)."""
    from pathlib import Path

    from ponder.errors import ModelLoadError
    from ponder.modalities.music.denoiser import AudioDenoiser

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"music model folder {str(folder)!r} does not exist")
    options = {k: v for k, v in options.items() if v is not None}
    options.pop("trust_remote_code", None)  # pipelines load diffusers' own classes only
    return AudioDenoiser.from_folder(folder, name=name, **options)
