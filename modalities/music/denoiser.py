"""A `Denoiser` over diffusers audio pipelines from a local folder: the audio side of the shared diffusion core.

The samplers, re-noising and x0 prediction live in `ponder.modalities.diffusion` (shared with image
diffusion); each pipeline class maps to a small family object in `ponder.modalities.music.families` that
supplies its conditioning, network call and decode to a waveform. This module loads the folder, checks
the options and turns decoded waveforms into `ponder.search.core.Audio` outputs.

Papers: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(deterministic Euler over the sigmas); Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM,
eta = 0); Evans et al. 2024, "Stable Audio Open"; Liu et al. 2024, "AudioLDM 2".

Rule: the state at time t is ``x_t = a(t) x0 + s(t) eps``; one network call at t gives (x0, eps) and a
deterministic step to any t' is ``x_t' = a(t') x0 + s(t') eps`` (see `ponder.modalities.diffusion.samplers`).

Gradients: weights are frozen at load (``requires_grad_(False)``) and nothing disables autograd, so
gradients flow exactly when the caller marks an input (the initial noise) ``requires_grad``;
`decode_tensor` gives the differentiable waveform ([B, T] mono, [B, C, T] multi-channel, unclamped),
`decode` a list of `Audio` (clamped to [-1, 1]).

Folder layout (what `AudioDenoiser.from_folder` reads; ``model_index.json``'s ``_class_name`` picks the family):

* ``StableAudioPipeline`` (transformer StableAudioDiTModel, vae AutoencoderOobleck, text_encoder T5,
  projection_model, tokenizer, scheduler CosineDPMSolverMultistepScheduler): text prompts, CFG,
  sampler "edm-euler" (deterministic Euler over the scheduler's sigmas). Only the scheduler's config is
  read (its diffusers class needs torchsde and adds noise every step), so ``pipe.scheduler`` is None.
  Waveforms at the VAE's ``sampling_rate``, ``audio_channels`` channels, at most
  ``sample_size * hop_length / sampling_rate`` seconds.
* ``AudioLDM2Pipeline`` (unet, mel vae, vocoder SpeechT5HifiGan, CLAP text_encoder, T5 text_encoder_2,
  projection_model, GPT-2 language_model, tokenizers, feature_extractor, scheduler): text prompts, CFG
  against the empty prompt, samplers "ddim" | "euler" | "euler-karras"; mono waveforms at the vocoder's
  ``sampling_rate``.
* ``PonderMelDiffusion`` (ponder's own layout, no diffusers pipeline class: unet UNet1DModel over a
  log-mel spectrogram, scheduler DDIMScheduler, tag_encoder, mel.json; see
  `ponder.modalities.music.families.MelDiffusion`): tag prompts (``"pluck, high, fast"``; ``""`` is
  unconditional), CFG against the null tags, samplers "ddim" | "euler" | "euler-karras"; mono waveforms
  decoded by inverse mel + Griffin-Lim.

Every weight loads with ``local_files_only=True`` and ``use_safetensors=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ponder.errors import ConfigError, ModelLoadError, check_int
from ponder.modalities.diffusion.denoiser import DiffusionDenoiser, read_pipeline_index
from ponder.modalities.music.families import FAMILIES
from ponder.search.core import Audio

# what `AudioDenoiser.from_folder` takes besides the folder and name
LOAD_OPTIONS = ("sampler", "guidance_scale", "seconds", "steps", "dtype", "device")


class AudioDenoiser(DiffusionDenoiser):
    """`ponder.search.core.Denoiser` over a diffusers audio pipeline loaded from a local folder.

    Attributes:
        modality: "music".
        name: the spec it was loaded from.
        pipe: the diffusers pipeline; net: its denoising network.
        family: the family object (`ponder.modalities.music.families`); ``info()["family"]`` its name.
        sampler: the shared sampler; ``sampler.name`` is "edm-euler" (Stable Audio) or "ddim" | "euler" |
            "euler-karras" (AudioLDM2).
        seconds: the audio length; sample_rate: Hz of the waveform; channels: its channels.
        default_steps: steps used when a strategy is not told how many.
        nfe: network evaluations so far, counted per batch row (a classifier-free-guidance pair counts 2).
    """

    modality = "music"

    def __init__(self, pipe, family, *, name: str, sampler: str | None = None, guidance_scale: float | None = None,
                 seconds: float | None = None, default_steps: int = 20):
        family.choose_seconds(seconds)
        scale = family.default_guidance if guidance_scale is None else guidance_scale
        super().__init__(family, family.make_sampler(sampler), name=name, shape=family.latent_shape(),
                         guidance_scale=scale, default_steps=default_steps)
        self.pipe = pipe
        self.net = family.net
        self.seconds = family.seconds
        self.sample_rate = family.sample_rate
        self.channels = family.channels

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: str | Path, *, name: str | None = None, sampler: str | None = None,
                    guidance_scale: float | None = None, seconds: float | None = None, steps: int | None = None,
                    dtype: str | None = None, device: str | None = None) -> AudioDenoiser:
        """Load the audio pipeline in `folder` (``model_index.json``), local files and safetensors only.

        Args:
            folder: a diffusers pipeline folder (see the module docstring for the kinds supported).
            name: what results call the model (default: the folder path).
            sampler: a deterministic sampler that fits the pipeline (default: the family's own).
            guidance_scale: classifier-free guidance (>= 1; 1 = off); default the pipeline's (7 / 3.5).
            seconds: audio length (> 0, at most what the model makes); default the model's native length.
            steps: default number of denoising steps (default: 20).
            dtype, device: torch dtype name / device for the weights.
        Returns:
            The denoiser, its weights frozen (gradients flow only to inputs the caller marks).
        """
        folder = Path(folder)
        index, kind = read_pipeline_index(folder, FAMILIES, "audio")
        if steps is not None:
            check_int("steps", steps, what="default denoising steps")
        scheduler_path = folder / "scheduler" / "scheduler_config.json"
        try:
            scheduler_config = json.loads(scheduler_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"cannot read the scheduler config {scheduler_path}: {err}") from None
        from diffusers.utils import logging as df_logging

        df_logging.set_verbosity_error()
        df_logging.disable_progress_bar()
        load_kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
        if dtype is not None:
            if dtype not in ("float32", "float16", "bfloat16"):
                raise ConfigError(f"unknown dtype {dtype!r}; allowed: float32, float16, bfloat16")
            load_kwargs["torch_dtype"] = getattr(torch, dtype)
        if kind == "StableAudioPipeline":  # only the scheduler's config is used (see the module docstring)
            load_kwargs["scheduler"] = None
        try:
            pipe = FAMILIES[kind].load_pipeline(folder, kind, load_kwargs)
        except (OSError, ValueError, TypeError, KeyError, ImportError) as err:
            raise ModelLoadError(f"cannot load the {kind} in {str(folder)!r}: {err}") from None
        if device is not None:
            pipe = pipe.to(device)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
        family = FAMILIES[kind](pipe, index=index, model_name=name or str(folder), scheduler_config=scheduler_config)
        return cls(pipe, family, name=name or str(folder), sampler=sampler, guidance_scale=guidance_scale,
                   seconds=seconds, default_steps=steps or getattr(family, "default_steps", 20))

    # -- audio specifics ---------------------------------------------------------------------------

    # -- batch invariance --------------------------------------------------------------------------

    def network(self, x_in: torch.Tensor, t: float, cond: dict) -> torch.Tensor:
        """The network one row at a time: batched matmuls round differently with the batch size (about
        1e-6 on these models, enough to flip 16-bit samples), and a candidate's waveform must not depend
        on which other candidates share its batch. x_in: [B, ...] -> [B, ...]"""
        b = x_in.shape[0]
        rows = [super(AudioDenoiser, self).network(x_in[i : i + 1], t, {k: _row(v, i, b) for k, v in cond.items()})
                for i in range(b)]
        return torch.cat(rows)  # [B, ...]

    def decode_tensor(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, ...] -> waveforms, one row at a time (see `network`); gradients pass."""
        return torch.cat([super(AudioDenoiser, self).decode_tensor(x0[i : i + 1]) for i in range(x0.shape[0])])

    def to_outputs(self, decoded: torch.Tensor) -> list[Audio]:
        """Waveforms [B, T] or [B, C, T] -> one `Audio` each ([T] or [C, T], float32 on the CPU, clamped to [-1, 1])."""
        waves = decoded.float().clamp(-1.0, 1.0).cpu()
        return [Audio(wave, self.sample_rate) for wave in waves]

    def info(self) -> dict:
        """What results record about the model (JSON-serialisable)."""
        return {"model": self.name, "family": self.family.name, "sampler": self.sampler.name,
                "guidance_scale": self.guidance_scale, "seconds": self.seconds, "sample_rate": self.sample_rate,
                "channels": self.channels, "default_steps": self.default_steps}


__all__ = ["LOAD_OPTIONS", "AudioDenoiser"]


def _row(value, i: int, b: int):
    """Row i of a batched conditioning value (a tensor of b rows); anything else as it is."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == b:
        return value[i : i + 1]
    return value
