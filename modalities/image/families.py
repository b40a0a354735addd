"""Image model families for the shared diffusion core: each supplies its conditioning, its network call,
its tensor decode and the image sizes it can make — nothing about sampling (that is
`ponder.modalities.diffusion`).

* `ClassUNet` — a class-conditional ``UNet2DModel`` in pixel space (``DDPMPipeline`` / ``DDIMPipeline``
  folders, e.g. ``zoo:digits``): a prompt names a class; there is no null class, so no guidance.
* `DiT` — ``DiTPipeline`` (transformer + VAE): class prompts, guidance against the null class,
  conditional rows first in a guided batch (as diffusers), the learned-sigma half of the output dropped.
* `StableDiffusion` — ``StableDiffusionPipeline`` (UNet2DConditionModel + CLIP text encoder + VAE).
* `StableDiffusionXL` — ``StableDiffusionXLPipeline`` (two CLIP encoders; pooled text and the
  (original size, crop corner, target size) micro-conditioning).
* `StableDiffusion3` — ``StableDiffusion3Pipeline`` (SD3Transformer2DModel, flow matching; the T5
  encoder may be absent).

`FAMILIES` maps a pipeline class name (``model_index.json``'s ``_class_name``) to its family.
"""

from __future__ import annotations

from typing import Any

import torch

from ponder.errors import ConfigError, InputError, ModelLoadError, check_int
from ponder.modalities.diffusion.denoiser import Condition


def _positive_pixels(what: str, value: Any) -> int:
    check_int(what, value, what="pixels")
    return value


class _ImageFamily:
    """What every image family shares: its network, optional VAE, and the image-size rules."""

    name: str
    cond_first = False  # guided batches: unconditional rows first (SD, SD3), unless a family says otherwise
    default_guidance = 1.0  # the pipeline's usual classifier-free guidance scale
    no_guidance: str | None = None  # why this family cannot guide (None: it can)
    load_options: dict = {}  # extra from_pretrained keywords the pipeline class needs
    latent_shift = False  # decode adds the VAE's shift_factor (SD3)
    latent_stats = False  # decode un-normalises by the VAE's latents_mean / latents_std (SDXL)
    labels: list[str] | None = None  # class names of class-conditional families

    def __init__(self, pipe, net, *, model_name: str):
        self.pipe = pipe
        self.net = net
        self.model_name = model_name
        self.vae = getattr(pipe, "vae", None)
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        self.channels = net.config.in_channels
        self.height, self.width = self.native_size()

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def native_size(self) -> tuple[int, int]:
        """The image size (pixels) the network was built for."""
        native = self.net.config.sample_size
        h, w = (native, native) if isinstance(native, int) else tuple(native)
        return h * self.vae_factor, w * self.vae_factor

    def size_factor(self) -> int:
        """Image sides must be multiples of this (VAE downsampling times the network's own)."""
        return self.vae_factor * 2 ** (len(self.net.config.down_block_types) - 1)

    def check_fits(self, height: int, width: int) -> None:
        """Family-specific size limits beyond the multiple-of rule (none by default)."""

    def choose_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """Validate and keep the image size (default: native); ConfigError naming a size it cannot make."""
        native_h, native_w = self.native_size()
        if height is None and width is None:
            self.height, self.width = native_h, native_w
            return native_h, native_w
        height = _positive_pixels("height", native_h if height is None else height)
        width = _positive_pixels("width", native_w if width is None else width)
        if (native_h, native_w) != (height, width):
            self.check_native(height, width, native_h, native_w)
        factor = self.size_factor()
        if height % factor or width % factor:
            raise ConfigError(f"image size {height}x{width} is not a multiple of {factor} (the VAE and network "
                              f"downsampling factor of this model)")
        self.check_fits(height, width)
        self.height, self.width = height, width
        return height, width

    def check_native(self, height: int, width: int, native_h: int, native_w: int) -> None:
        """Called for a non-native size; a family with fixed position embeddings refuses it."""

    def latent_shape(self) -> tuple[int, int, int]:
        """One row of x: (channels, latent height, latent width)."""
        return self.channels, self.height // self.vae_factor, self.width // self.vae_factor

    def decode_tensor(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, C, h, w] -> pixels [B, 3 or 1, H, W] in about [-1, 1] (unclamped), through
        the VAE for latent models; gradients pass."""
        if self.vae is None:
            return x0
        cfg = self.vae.config
        z = x0 / cfg.scaling_factor
        if self.latent_shift and cfg.get("shift_factor") is not None:
            z = z + cfg.shift_factor
        if self.latent_stats and cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(z)  # [1, C, 1, 1]
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(z)
            z = z * std + mean
        return self.vae.decode(z.to(self.vae.dtype)).sample  # [B, 3, H, W]


class _ClassFamily(_ImageFamily):
    """Class-conditional families: a prompt is a class name (case-insensitive) or its index."""

    def class_index(self, prompt: Any) -> int:
        """The class a prompt names: a label (case-insensitive) or an index; InputError otherwise."""
        text = str(prompt).strip()
        lowered = [lab.lower() for lab in self.labels]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if text.isdigit() and int(text) < len(self.labels) and not isinstance(prompt, bool):
            return int(text)
        shown = ", ".join(self.labels[:20]) + (", ..." if len(self.labels) > 20 else "")
        raise InputError(f"prompt {prompt!r} is not a class of {self.model_name}; classes: {shown}")


def _labels(index: dict, count: int) -> list[str]:
    id2label = index.get("id2label") or {}
    return [str(id2label.get(str(i), i)) for i in range(count)]


class ClassUNet(_ClassFamily):
    """A class-conditional ``UNet2DModel`` in pixel space (no VAE, no null class)."""

    name = "unet"
    no_guidance = "a class-conditional UNet2DModel has no null class: guidance_scale must be 1"

    def __init__(self, pipe, *, index: dict, model_name: str):
        super().__init__(pipe, pipe.unet, model_name=model_name)
        count = getattr(pipe.unet.config, "num_class_embeds", None)
        if not count:
            raise ModelLoadError(f"{model_name!r}: the UNet2DModel has no class embedding (num_class_embeds); "
                                 "ponder's image prompts need a class-conditional model")
        self.labels = _labels(index, count)

    def condition(self, prompt: Any, guided: bool) -> Condition:
        label = self.class_index(prompt)
        cond = {"class_labels": torch.tensor([label], device=self.device)}  # [1]
        return Condition(prompt, cond, None, label=label, meta={"class": self.labels[label]})

    def predict(self, x, timestep, cond):
        return self.net(x, timestep, **cond).sample  # [B, C, H, W]


class DiT(_ClassFamily):
    """``DiTPipeline``: class prompts, guidance against the null class (index num_embeds_ada_norm)."""

    name = "dit"
    cond_first = True  # diffusers' DiT loop puts the conditional rows first
    default_guidance = 4.0

    def __init__(self, pipe, *, index: dict, model_name: str):
        super().__init__(pipe, pipe.transformer, model_name=model_name)
        self.labels = _labels(index, self.net.config.num_embeds_ada_norm)

    def size_factor(self) -> int:
        return self.vae_factor * self.net.config.patch_size

    def check_native(self, height, width, native_h, native_w):
        raise ConfigError(f"this DiT makes only {native_h}x{native_w} images (fixed position embeddings), "
                          f"got {height}x{width}")

    def condition(self, prompt: Any, guided: bool) -> Condition:
        label = self.class_index(prompt)
        cond = {"class_labels": torch.tensor([label], device=self.device)}  # [1]
        uncond = {"class_labels": torch.tensor([self.net.config.num_embeds_ada_norm], device=self.device)} \
            if guided else None
        return Condition(prompt, cond, uncond, label=label, meta={"class": self.labels[label]})

    def predict(self, x, timestep, cond):
        out = self.net(x, timestep=timestep, **cond).sample  # [B, C or 2C, h, w]
        if self.net.config.out_channels // 2 == self.channels:  # learned sigma: keep the mean part
            out = out[:, : self.channels]
        return out


class _TextFamily(_ImageFamily):
    default_guidance = 7.5

    def check_prompt(self, prompt: Any) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"this text-to-image model needs a non-empty text prompt, got {prompt!r}")
        return prompt


class StableDiffusion(_TextFamily):
    """``StableDiffusionPipeline``: CLIP text embeddings as cross-attention context."""

    name = "sd"
    load_options = {"safety_checker": None, "requires_safety_checker": False}

    def __init__(self, pipe, *, index: dict, model_name: str):
        super().__init__(pipe, pipe.unet, model_name=model_name)

    def condition(self, prompt: Any, guided: bool) -> Condition:
        prompt = self.check_prompt(prompt)
        pos, neg = self.pipe.encode_prompt(prompt, self.device, 1, guided, negative_prompt=None)  # [1, L, D]
        uncond = {"encoder_hidden_states": neg} if guided else None
        return Condition(prompt, {"encoder_hidden_states": pos}, uncond)

    def predict(self, x, timestep, cond):
        return self.net(x, timestep, **cond).sample


class StableDiffusionXL(_TextFamily):
    """``StableDiffusionXLPipeline``: two encoders' context, pooled text and size micro-conditioning."""

    name = "sdxl"
    default_guidance = 5.0
    latent_stats = True

    def __init__(self, pipe, *, index: dict, model_name: str):
        super().__init__(pipe, pipe.unet, model_name=model_name)

    def condition(self, prompt: Any, guided: bool) -> Condition:
        prompt = self.check_prompt(prompt)
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(prompt, prompt, self.device, 1, guided)
        size = (self.height, self.width)  # (original size, crop corner (0, 0), target size)
        time_ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=pos.dtype,
                                               text_encoder_projection_dim=pooled.shape[-1]).to(self.device)
        cond = {"encoder_hidden_states": pos, "text_embeds": pooled, "time_ids": time_ids}
        uncond = {"encoder_hidden_states": neg, "text_embeds": neg_pooled, "time_ids": time_ids} if guided else None
        return Condition(prompt, cond, uncond)

    def predict(self, x, timestep, cond):
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        return self.net(x, timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                        added_cond_kwargs=added).sample


class StableDiffusion3(_TextFamily):
    """``StableDiffusion3Pipeline``: joint attention over text tokens plus pooled projections."""

    name = "sd3"
    default_guidance = 7.0
    latent_shift = True

    def __init__(self, pipe, *, index: dict, model_name: str):
        super().__init__(pipe, pipe.transformer, model_name=model_name)

    def size_factor(self) -> int:
        return self.vae_factor * self.net.config.patch_size

    def check_fits(self, height, width):
        cfg = self.net.config
        if cfg.pos_embed_max_size is not None:
            most = cfg.pos_embed_max_size * cfg.patch_size * self.vae_factor
            if height > most or width > most:
                raise ConfigError(f"image size {height}x{width} exceeds this SD3 transformer's {most}x{most}")

    def condition(self, prompt: Any, guided: bool) -> Condition:
        prompt = self.check_prompt(prompt)
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(prompt, prompt, prompt, device=self.device,
                                                               num_images_per_prompt=1,
                                                               do_classifier_free_guidance=guided)
        cond = {"encoder_hidden_states": pos, "pooled_projections": pooled}
        uncond = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled} if guided else None
        return Condition(prompt, cond, uncond)

    def predict(self, x, timestep, cond):
        return self.net(hidden_states=x, timestep=timestep, **cond).sample


# pipeline class (model_index.json "_class_name") -> its family
FAMILIES: dict[str, type[_ImageFamily]] = {
    "DDPMPipeline": ClassUNet,
    "DDIMPipeline": ClassUNet,
    "DiTPipeline": DiT,
    "StableDiffusionPipeline": StableDiffusion,
    "StableDiffusionXLPipeline": StableDiffusionXL,
    "StableDiffusion3Pipeline": StableDiffusion3,
}

__all__ = ["FAMILIES", "ClassUNet", "DiT", "StableDiffusion", "StableDiffusion3", "StableDiffusionXL"]
