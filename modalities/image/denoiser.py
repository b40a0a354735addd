"""A `Denoiser` over diffusers pipelines from a local folder: the image side of the shared diffusion core.

The samplers (DDIM, Euler, Euler-Karras, flow), re-noising and x0 prediction live in
`ponder.modalities.diffusion` (shared with audio diffusion); each pipeline class maps to a small family
object in `ponder.modalities.image.families` that supplies its conditioning, network call and VAE decode.
This module loads the folder, checks the options and turns decoded pixels into PIL images.

Papers: Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM, eta = 0); Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models" (deterministic Euler over the
sigmas); Lipman et al. 2023 / Esser et al. 2024 (flow matching, rectified-flow Euler).

Rule: the state at time t is ``x_t = a(t) x0 + s(t) eps``; one network call at t gives (x0, eps) and a
deterministic step to any t' is ``x_t' = a(t') x0 + s(t') eps`` (see `ponder.modalities.diffusion.samplers`).

Gradients: weights are frozen at load (``requires_grad_(False)``) and nothing disables autograd, so
gradients flow exactly when the caller marks an input (the initial noise) ``requires_grad``;
`decode_tensor` gives differentiable pixels in [-1, 1] for losses, `decode` PIL images.

Folder layout (what `ponder.load("image", folder)` reads; ``zoo:digits`` is the first kind):

* class-conditional pixel model (no diffusers pipeline calls it, so ponder runs the loop)::

      model_index.json   {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.0",
                          "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"],
                          "id2label": {"0": "0", "1": "1", ...}}       # class index -> name
      unet/config.json, unet/diffusion_pytorch_model.safetensors       # UNet2DModel, num_class_embeds = #classes
      scheduler/scheduler_config.json

  A prompt names a class (``"7"``) or its index; anything else is an InputError listing the classes.
  Pixels are in [-1, 1]; 1 channel decodes to a grey ("L") image, 3 to RGB.
* ``DiTPipeline`` (transformer + vae + scheduler; ``id2label`` in model_index.json as diffusers writes it
  for DiT): class prompts, classifier-free guidance against the null class.
* ``StableDiffusionPipeline`` (UNet2DConditionModel + CLIP text encoder + vae): text prompts, CFG.
* ``StableDiffusionXLPipeline`` (two CLIP encoders; pooled text and size micro-conditioning): text, CFG.
* ``StableDiffusion3Pipeline`` (SD3Transformer2DModel + FlowMatchEulerDiscreteScheduler; the T5
  encoder may be absent): text prompts, CFG, flow-matching Euler.

Every weight loads with ``local_files_only=True`` and ``use_safetensors=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ponder.errors import ConfigError, ModelLoadError, check_int
from ponder.modalities.diffusion.denoiser import Condition, DiffusionDenoiser, read_pipeline_index
from ponder.modalities.diffusion.samplers import SAMPLERS, make_sampler
from ponder.modalities.image.families import FAMILIES

# what `DiffusersDenoiser.from_folder` takes besides the folder and name
LOAD_OPTIONS = ("sampler", "guidance_scale", "height", "width", "steps", "dtype", "device")


class DiffusersDenoiser(DiffusionDenoiser):
    """`ponder.search.core.Denoiser` over a diffusers pipeline loaded from a local folder.

    Attributes:
        modality: "image".
        name: the spec it was loaded from.
        pipe: the diffusers pipeline; net: its denoising network; vae: its VAE (None in pixel space).
        family: the family object (`ponder.modalities.image.families`); ``info()["family"]`` its name.
        labels: class names (index order) for class-conditional models, else None.
        default_steps: steps used when a strategy is not told how many.
        nfe: network evaluations so far, counted per batch row (a classifier-free-guidance pair
            counts 2); strategies read the difference around their work.
        sampler: the shared sampler; ``sampler.name`` is "ddim" | "euler" | "euler-karras" | "flow".
        height, width: image size in pixels.
    """

    modality = "image"

    def __init__(self, pipe, family, *, name: str, sampler: str | None = None, guidance_scale: float | None = None,
                 height: int | None = None, width: int | None = None, default_steps: int = 20):
        scale = family.default_guidance if guidance_scale is None else guidance_scale
        height, width = family.choose_size(height, width)
        super().__init__(family, make_sampler(sampler, pipe.scheduler), name=name, shape=family.latent_shape(),
                         guidance_scale=scale, default_steps=default_steps)
        if family.no_guidance is not None and self.guidance_scale != 1.0:
            raise ConfigError(family.no_guidance)
        self.pipe = pipe
        self.net = family.net
        self.vae = family.vae
        self.vae_factor = family.vae_factor
        self.channels = family.channels
        self.labels = family.labels
        self.height, self.width = height, width

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: str | Path, *, name: str | None = None, sampler: str | None = None,
                    guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                    steps: int | None = None, dtype: str | None = None,
                    device: str | None = None) -> DiffusersDenoiser:
        """Load the pipeline in `folder` (``model_index.json``), local files and safetensors only.

        Args:
            folder: a diffusers pipeline folder (see the module docstring for the kinds supported).
            name: what results call the model (default: the folder path).
            sampler: "ddim" | "euler" | "euler-karras" | "flow" (default: flow for flow-matching schedulers, euler for
                an Euler scheduler, else ddim).
            guidance_scale: classifier-free guidance (>= 1; 1 = off); default the pipeline's usual.
            height, width: image size in pixels (default: the model's native size).
            steps: default number of denoising steps (default: 20).
            dtype, device: torch dtype name / device for the weights.
        Returns:
            The denoiser, its weights frozen (gradients flow only to inputs the caller marks).
        """
        folder = Path(folder)
        index, kind = read_pipeline_index(folder, FAMILIES, "image")
        if steps is not None:
            check_int("steps", steps, what="denoising steps")
        family_cls = FAMILIES[kind]
        import diffusers
        from diffusers.utils import logging as df_logging

        df_logging.set_verbosity_error()
        df_logging.disable_progress_bar()
        pipe_cls = getattr(diffusers, kind)
        load_kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
        if dtype is not None:
            if dtype not in ("float32", "float16", "bfloat16"):
                raise ConfigError(f"unknown dtype {dtype!r}; allowed: float32, float16, bfloat16")
            load_kwargs["torch_dtype"] = getattr(torch, dtype)
        # components saved as None (no safety checker, no T5 encoder) must be passed as None again
        load_kwargs.update({k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]})
        load_kwargs.update(family_cls.load_options)
        try:
            pipe = pipe_cls.from_pretrained(str(folder), **load_kwargs)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ModelLoadError(f"cannot load the {kind} in {str(folder)!r}: {err}") from None
        if device is not None:
            pipe = pipe.to(device)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
        family = family_cls(pipe, index=index, model_name=name or str(folder))
        return cls(pipe, family, name=name or str(folder), sampler=sampler, guidance_scale=guidance_scale,
                   height=height, width=width, default_steps=steps or 20)

    # -- image specifics ---------------------------------------------------------------------------

    def class_index(self, prompt: Any) -> int:
        """The class a prompt names: a label (case-insensitive) or an index; InputError otherwise."""
        if self.labels is None:
            raise ConfigError(f"{self.name} is a text-to-image model: it has no classes")
        return self.family.class_index(prompt)

    def to_outputs(self, decoded: torch.Tensor) -> list:
        """Pixels [B, C, H, W] in [-1, 1] -> PIL images (1 channel: grey "L", 3: RGB), rounded to uint8."""
        from PIL import Image

        pixels = (decoded.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, C]
        images = (pixels * 255).round().astype("uint8")
        if images.shape[-1] == 1:
            return [Image.fromarray(im[..., 0], mode="L") for im in images]
        return [Image.fromarray(im) for im in images]

    def info(self) -> dict:
        """What results record about the model (JSON-serialisable)."""
        return {"model": self.name, "family": self.family.name, "sampler": self.sampler.name,
                "guidance_scale": self.guidance_scale, "height": self.height, "width": self.width,
                "default_steps": self.default_steps}


__all__ = ["LOAD_OPTIONS", "SAMPLERS", "Condition", "DiffusersDenoiser"]
