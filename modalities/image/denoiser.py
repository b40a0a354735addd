"""A `Denoiser` over diffusers pipelines from a local folder: deterministic samplers for noise search.

Papers: Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM, eta = 0); Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models" (deterministic Euler over the
sigmas); Lipman et al. 2023 / Esser et al. 2024 (flow matching, rectified-flow Euler).

Rule (one place: `_Sampler` and `DiffusersDenoiser._split`): the state at time t is
``x_t = a(t) x0 + s(t) eps``; one network call at t gives (x0, eps) — from an epsilon, v or flow
prediction — and a deterministic step to any t' is ``x_t' = a(t') x0 + s(t') eps``. That is exactly
DDIM (eta 0), diffusers' Euler (its VE variable divided by sqrt(1 + sigma^2)) and flow-matching Euler
(a = 1 - t, s = t). Re-noising from t to a noisier t' follows the forward process with the given noise.

Folder layout (what `ponder.load("image", folder)` reads; A2's ``zoo:digits`` is the first kind):

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

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ponder.errors import ConfigError, InputError, ModelLoadError

SAMPLERS = ("ddim", "euler", "euler-karras", "flow")
# what `DiffusersDenoiser.from_folder` takes besides the folder and name
LOAD_OPTIONS = ("sampler", "guidance_scale", "height", "width", "steps", "dtype", "device")
# pipeline class -> how the network is called
FAMILIES = {
    "DDPMPipeline": "unet", "DDIMPipeline": "unet",
    "DiTPipeline": "dit",
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
}


# ---- samplers: the time grid and the forward process x_t = a(t) x0 + s(t) eps -------------------


class _Sampler(Protocol):
    """A time grid over a diffusers scheduler config and the forward process at any time on it."""

    name: str
    scheduler: Any

    def times(self, steps: int) -> list[float]: ...  # steps + 1 times, noisiest first; the last is clean

    def alpha_sigma(self, t: float) -> tuple[float, float]: ...  # (a(t), s(t))

    def model_time(self, t: float) -> float: ...  # the timestep value the network is called with


class _DDIM:
    """VP times = training timesteps (integers); the clean end is -1 (the scheduler's final alpha)."""

    name = "ddim"

    def __init__(self, config):
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(config)
        self.acp = self.scheduler.alphas_cumprod.double()  # [T]
        self.final = float(self.scheduler.final_alpha_cumprod)

    def times(self, steps):
        self.scheduler.set_timesteps(steps)
        return [float(t) for t in self.scheduler.timesteps] + [-1.0]

    def alpha_sigma(self, t):
        acp = self.final if t < 0 else float(self.acp[int(round(t))])
        return math.sqrt(acp), math.sqrt(1.0 - acp)

    def model_time(self, t):
        return float(int(round(t)))


class _SigmaGrid:
    """Times are the scheduler's sigmas (steps + 1, ending at 0); the network's timestep for each grid
    sigma is remembered in `table` exactly as the scheduler computed it."""

    scheduler: Any
    table: dict[float, float]

    def times(self, steps):
        self.scheduler.set_timesteps(steps)
        sigmas = [float(s) for s in self.scheduler.sigmas]  # steps + 1, ends at 0
        self.table.update({s: float(t) for s, t in zip(sigmas, self.scheduler.timesteps)})
        return sigmas


class _Euler(_SigmaGrid):
    """Times are diffusers' Euler sigmas (VE); the state is kept in VP form x / sqrt(1 + sigma^2),
    which is exactly what the network sees (diffusers' `scale_model_input`)."""

    name = "euler"

    def __init__(self, config, karras: bool | None = None):
        import numpy as np
        from diffusers import EulerDiscreteScheduler

        # karras=True spaces the sigmas as Karras et al. (rho = 7); None keeps the scheduler's choice
        extra = {} if karras is None else {"use_karras_sigmas": karras}
        self.scheduler = EulerDiscreteScheduler.from_config(config, **extra)
        if karras:
            self.name = "euler-karras"
        acp = self.scheduler.alphas_cumprod.double().numpy()
        self.log_sigmas = np.log(((1 - acp) / acp) ** 0.5)
        self.table: dict[float, float] = {}

    def alpha_sigma(self, t):
        c = math.sqrt(1.0 + t * t)
        return 1.0 / c, t / c

    def model_time(self, t):
        if t in self.table:
            return self.table[t]
        import numpy as np

        return float(self.scheduler._sigma_to_t(np.array(t), self.log_sigmas))


class _Flow(_SigmaGrid):
    """Flow matching: x_t = (1 - t) x0 + t eps; the network takes t * num_train_timesteps."""

    name = "flow"

    def __init__(self, config):
        from diffusers import FlowMatchEulerDiscreteScheduler

        if config.get("use_dynamic_shifting"):
            raise ModelLoadError("flow-matching schedulers with use_dynamic_shifting (resolution-dependent "
                                 "shift, e.g. FLUX) are not supported; use a fixed shift")
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        self.train_steps = float(self.scheduler.config.num_train_timesteps)
        self.table: dict[float, float] = {}

    def alpha_sigma(self, t):
        return 1.0 - t, t

    def model_time(self, t):
        return self.table.get(t, t * self.train_steps)


def _make_sampler(name: str | None, scheduler) -> _Sampler:
    config = dict(scheduler.config)
    is_flow = "FlowMatch" in type(scheduler).__name__
    if name is None:
        name = "flow" if is_flow else "euler" if type(scheduler).__name__.startswith("Euler") else "ddim"
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    if (name == "flow") != is_flow:
        kind = "a flow-matching" if is_flow else "a noise-prediction (VP)"
        allowed = "flow" if is_flow else "ddim, euler, euler-karras"
        raise ConfigError(f"sampler {name!r} does not fit {kind} scheduler ({type(scheduler).__name__}); "
                          f"use {allowed}")
    if name == "euler-karras":
        return _Euler(config, karras=True)
    return {"ddim": _DDIM, "euler": _Euler, "flow": _Flow}[name](config)


# ---- conditioning ---------------------------------------------------------------------------------


@dataclass
class Condition:
    """One prompt's conditioning; it broadcasts to any batch size at call time.

    Tensors hold one row each (``[1, ...]``); with classifier-free guidance `uncond` holds the
    unconditional row (null class, or the empty prompt's embeddings)."""

    prompt: Any
    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None = None
    label: int | None = None  # class index for class-conditional models
    meta: dict = field(default_factory=dict)


def _rows(tensors: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(b, *v.shape[1:]) for k, v in tensors.items()}


# ---- the denoiser ---------------------------------------------------------------------------------


class DiffusersDenoiser:
    """`ponder.search.core.Denoiser` over a diffusers pipeline loaded from a local folder.

    Attributes:
        modality: "image".
        name: the spec it was loaded from.
        labels: class names (index order) for class-conditional models, else None.
        default_steps: steps used when a strategy is not told how many.
        nfe: network evaluations so far, counted per batch row (a classifier-free-guidance pair
            counts 2); strategies read the difference around their work.
        sampler: "ddim" | "euler" | "euler-karras" | "flow".
    """

    modality = "image"

    def __init__(self, pipe, *, name: str, family: str, labels: list[str] | None, sampler: str | None = None,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 default_steps: int = 20):
        self.pipe = pipe
        self.name = name
        self.family = family
        self.labels = labels
        self.net = pipe.unet if family in ("unet", "sd", "sdxl") else pipe.transformer
        self.vae = getattr(pipe, "vae", None)
        self.sampler = _make_sampler(sampler, pipe.scheduler)
        defaults = {"unet": 1.0, "dit": 4.0, "sd": 7.5, "sdxl": 5.0, "sd3": 7.0}
        self.guidance_scale = float(defaults[family] if guidance_scale is None else guidance_scale)
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 1.0:
            raise ConfigError(f"guidance_scale must be a number >= 1 (1 = no guidance), got {guidance_scale!r}")
        if family == "unet" and self.guidance_scale != 1.0:
            raise ConfigError("a class-conditional UNet2DModel has no null class: guidance_scale must be 1")
        self.default_steps = default_steps
        self.nfe = 0
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        self.height, self.width = self._check_size(height, width)
        cfg = self.net.config
        self.channels = cfg.in_channels
        self.dtype = self.net.dtype
        self.device = self.net.device

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
        """
        folder = Path(folder)
        index_path = folder / "model_index.json"
        if not index_path.is_file():
            raise ModelLoadError(f"{str(folder)!r} is not a diffusers pipeline folder (no model_index.json)")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"{index_path}: not valid JSON ({err})") from None
        kind = index.get("_class_name")
        if kind not in FAMILIES:
            raise ModelLoadError(f"{str(folder)!r} holds a {kind or 'pipeline of unknown class'}; ponder's image "
                                 f"denoiser supports {', '.join(sorted(FAMILIES))}")
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
        if kind == "StableDiffusionPipeline":
            load_kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            pipe = pipe_cls.from_pretrained(str(folder), **load_kwargs)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ModelLoadError(f"cannot load the {kind} in {str(folder)!r}: {err}") from None
        if device is not None:
            pipe = pipe.to(device)
        family = FAMILIES[kind]
        if family == "unet" and not getattr(pipe.unet.config, "num_class_embeds", None):
            raise ModelLoadError(f"{str(folder)!r}: the UNet2DModel has no class embedding (num_class_embeds); "
                                 "ponder's image prompts need a class-conditional model")
        labels = None
        if family in ("unet", "dit"):
            id2label = index.get("id2label") or {}
            net_cfg = pipe.unet.config if family == "unet" else pipe.transformer.config
            count = net_cfg.num_class_embeds if family == "unet" else net_cfg.num_embeds_ada_norm
            labels = [str(id2label.get(str(i), i)) for i in range(count)]
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0):
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        return cls(pipe, name=name or str(folder), family=family, labels=labels, sampler=sampler,
                   guidance_scale=guidance_scale, height=height, width=width, default_steps=steps or 20)

    def _check_size(self, height, width) -> tuple[int, int]:
        cfg = self.net.config
        native = cfg.sample_size
        native_h, native_w = (native, native) if isinstance(native, int) else tuple(native)
        native_h, native_w = native_h * self.vae_factor, native_w * self.vae_factor
        if height is None and width is None:
            return native_h, native_w
        height = native_h if height is None else height
        width = native_w if width is None else width
        for what, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{what} must be a positive integer of pixels, got {v!r}")
        if self.family == "dit" and (height, width) != (native_h, native_w):
            raise ConfigError(f"this DiT makes only {native_h}x{native_w} images (fixed position embeddings), "
                              f"got {height}x{width}")
        if self.family in ("unet", "sd", "sdxl"):
            factor = self.vae_factor * 2 ** (len(cfg.down_block_types) - 1)
        else:  # sd3: latent patches
            factor = self.vae_factor * cfg.patch_size
        if height % factor or width % factor:
            raise ConfigError(f"image size {height}x{width} is not a multiple of {factor} (the VAE and network "
                              f"downsampling factor of this model)")
        if self.family == "sd3" and cfg.pos_embed_max_size is not None:
            most = cfg.pos_embed_max_size * cfg.patch_size * self.vae_factor
            if height > most or width > most:
                raise ConfigError(f"image size {height}x{width} exceeds this SD3 transformer's {most}x{most}")
        return height, width

    # -- the protocol ------------------------------------------------------------------------------

    def condition(self, prompt: Any, n: int = 1) -> Condition:
        """Conditioning for `prompt` (a class name / index, or text); it broadcasts to any batch."""
        if self.labels is not None:
            label = self.class_index(prompt)
            cond = {"class_labels": torch.tensor([label], device=self.device)}
            uncond = None
            if self.family == "dit" and self.guidance_scale > 1:
                uncond = {"class_labels": torch.tensor([self.net.config.num_embeds_ada_norm], device=self.device)}
            return Condition(prompt, cond, uncond, label=label, meta={"class": self.labels[label]})
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"this text-to-image model needs a non-empty text prompt, got {prompt!r}")
        cfg = self.guidance_scale > 1
        with torch.no_grad():
            if self.family == "sd":
                pos, neg = self.pipe.encode_prompt(prompt, self.device, 1, cfg, negative_prompt=None)
                cond = {"encoder_hidden_states": pos}
                uncond = {"encoder_hidden_states": neg} if cfg else None
            elif self.family == "sdxl":  # pooled text + (original size, crop corner, target size) ids
                pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(prompt, prompt, self.device, 1, cfg)
                size = (self.height, self.width)
                time_ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=pos.dtype,
                                                       text_encoder_projection_dim=pooled.shape[-1]).to(self.device)
                cond = {"encoder_hidden_states": pos, "text_embeds": pooled, "time_ids": time_ids}
                uncond = None
                if cfg:
                    uncond = {"encoder_hidden_states": neg, "text_embeds": neg_pooled, "time_ids": time_ids}
            else:  # sd3
                pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(prompt, prompt, prompt, device=self.device,
                                                                       num_images_per_prompt=1,
                                                                       do_classifier_free_guidance=cfg)
                cond = {"encoder_hidden_states": pos, "pooled_projections": pooled}
                uncond = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled} if cfg else None
        return Condition(prompt, cond, uncond)

    def class_index(self, prompt: Any) -> int:
        """The class a prompt names: a label (case-insensitive) or an index; InputError otherwise."""
        assert self.labels is not None
        text = str(prompt).strip()
        lowered = [lab.lower() for lab in self.labels]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if text.isdigit() and int(text) < len(self.labels) and not isinstance(prompt, bool):
            return int(text)
        shown = ", ".join(self.labels[:20]) + (", ..." if len(self.labels) > 20 else "")
        raise InputError(f"prompt {prompt!r} is not a class of {self.name}; classes: {shown}")

    def timesteps(self, steps: int) -> list[float]:
        """steps + 1 times, noisiest first; `step` between consecutive ones costs one NFE per row."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        return self.sampler.times(steps)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One row of x: (channels, latent height, latent width)."""
        return self.channels, self.height // self.vae_factor, self.width // self.vae_factor

    def noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One initial x_T per generator: exactly what diffusers' ``latents=`` takes (standard normal,
        drawn row by row as `randn_tensor` does with a list of generators). -> [B, C, h, w]"""
        rows = [torch.randn((1, *self.shape), generator=g, device=g.device, dtype=torch.float32)
                for g in generators]
        return torch.cat(rows).to(self.device, self.dtype)

    def _network(self, x_in: torch.Tensor, t: float, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One batched network call at time t. x_in: [B, C, h, w] -> prediction [B, C, h, w]."""
        b = x_in.shape[0]
        model_t = self.sampler.model_time(t)
        dtype = torch.int64 if self.sampler.name == "ddim" else torch.float32
        timestep = torch.full((b,), model_t, dtype=dtype, device=x_in.device)
        self.nfe += b
        with torch.no_grad():
            if self.family in ("unet", "sd"):
                out = self.net(x_in, timestep, **kwargs).sample
            elif self.family == "sdxl":
                added = {"text_embeds": kwargs["text_embeds"], "time_ids": kwargs["time_ids"]}
                out = self.net(x_in, timestep, encoder_hidden_states=kwargs["encoder_hidden_states"],
                               added_cond_kwargs=added).sample
            elif self.family == "dit":
                out = self.net(x_in, timestep=timestep, **kwargs).sample
                if self.net.config.out_channels // 2 == self.channels:  # learned sigma: keep the mean part
                    out = out[:, : self.channels]
            else:
                out = self.net(hidden_states=x_in, timestep=timestep, **kwargs).sample
        return out

    def _predict(self, x_in: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        """The (guided) prediction at t for x_in [B, C, h, w]; CFG batches cond and uncond rows."""
        b = x_in.shape[0]
        if cond.uncond is None or self.guidance_scale == 1.0:
            return self._network(x_in, t, _rows(cond.cond, b))
        # diffusers' orders: DiT puts conditional rows first, SD / SD3 the unconditional ones
        first, second = (cond.cond, cond.uncond) if self.family == "dit" else (cond.uncond, cond.cond)
        both = {k: torch.cat([_rows(first, b)[k], _rows(second, b)[k]]) for k in first}
        out = self._network(torch.cat([x_in, x_in]), t, both)  # [2B, C, h, w]
        a, z = out[:b], out[b:]
        c_pred, u_pred = (a, z) if self.family == "dit" else (z, a)
        return u_pred + self.guidance_scale * (c_pred - u_pred)

    def _split(self, x_t: torch.Tensor, t: float, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from one network call at t: the only place predictions are interpreted."""
        a, s = self.sampler.alpha_sigma(t)
        if s == 0:  # the clean end: nothing to predict (and no network call)
            return x_t / a, torch.zeros_like(x_t)
        pred = self._predict(x_t, t, cond)  # [B, C, h, w]
        kind = "flow" if self.sampler.name == "flow" else self.sampler.scheduler.config.prediction_type
        if kind == "epsilon":
            eps = pred
            x0 = (x_t - s * eps) / a
        elif kind == "v_prediction":  # v = a eps - s x0 with a^2 + s^2 = 1
            x0 = a * x_t - s * pred
            eps = s * x_t + a * pred
        elif kind == "sample":
            x0 = pred
            eps = (x_t - a * x0) / s
        elif kind == "flow":  # v = eps - x0 with a = 1 - t, s = t
            x0 = x_t - s * pred
            eps = x_t + a * pred
        else:
            raise ModelLoadError(f"prediction_type {kind!r} is not supported (epsilon, v_prediction, sample)")
        config = self.sampler.scheduler.config
        if config.get("clip_sample"):  # as diffusers' DDIM: clip x0, keep eps
            bound = config.get("clip_sample_range", 1.0)
            x0 = x0.clamp(-bound, bound)
        return x0, eps

    def step(self, x_t: torch.Tensor, t: float, t_next: float, cond: Condition) -> torch.Tensor:
        """Deterministic step from t to t_next (any later time): x_t' = a(t') x0 + s(t') eps. One NFE per row."""
        x0, eps = self._split(x_t, t, cond)
        a_next, s_next = self.sampler.alpha_sigma(t_next)
        return a_next * x0 + s_next * eps if s_next > 0 else a_next * x0

    def predict_x0(self, x_t: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        """The model's estimate of the clean sample from x_t (one NFE per row). -> [B, C, h, w]"""
        return self._split(x_t, t, cond)[0]

    def renoise(self, x: torch.Tensor, t_from: float, t_to: float, noise: torch.Tensor) -> torch.Tensor:
        """Forward process from t_from to the noisier t_to with standard-normal `noise`:
        x_to = r x + sqrt(s_to^2 - r^2 s_from^2) noise, r = a_to / a_from. From the clean end this is
        q(x_t | x0) = a x0 + s noise."""
        a_from, s_from = self.sampler.alpha_sigma(t_from)
        a_to, s_to = self.sampler.alpha_sigma(t_to)
        # noise level s / a (infinite at pure noise) may only grow
        level_from = s_from / a_from if a_from > 0 else math.inf
        level_to = s_to / a_to if a_to > 0 else math.inf
        if level_to < level_from * (1 - 1e-9):
            raise ConfigError(f"renoise goes to a noisier time: {t_to} is less noisy than {t_from}")
        if a_from == 0:  # pure noise stays pure noise
            return x
        ratio = a_to / a_from
        var = max(s_to * s_to - ratio * ratio * s_from * s_from, 0.0)
        return ratio * x + math.sqrt(var) * noise

    def decode(self, x0: torch.Tensor) -> list:
        """Clean samples [B, C, h, w] -> PIL images (through the VAE for latent models)."""
        from PIL import Image

        with torch.no_grad():
            if self.vae is not None:
                cfg = self.vae.config
                z = x0 / cfg.scaling_factor
                if self.family == "sd3" and cfg.get("shift_factor") is not None:
                    z = z + cfg.shift_factor
                if self.family == "sdxl" and cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
                    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(z)
                    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(z)
                    z = z * std + mean
                x0 = self.vae.decode(z.to(self.vae.dtype)).sample
        pixels = (x0.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, C]
        images = (pixels * 255).round().astype("uint8")
        if images.shape[-1] == 1:
            return [Image.fromarray(im[..., 0], mode="L") for im in images]
        return [Image.fromarray(im) for im in images]

    # -- conveniences ------------------------------------------------------------------------------

    def sample(self, x_T: torch.Tensor, cond: Condition, steps: int) -> torch.Tensor:
        """Denoise x_T through `steps` deterministic steps to clean samples. -> [B, C, h, w]"""
        times = self.timesteps(steps)
        x = x_T
        for t, t_next in zip(times[:-1], times[1:]):
            x = self.step(x, t, t_next, cond)
        return x

    def info(self) -> dict:
        """What results record about the model (JSON-serialisable)."""
        return {"model": self.name, "family": self.family, "sampler": self.sampler.name,
                "guidance_scale": self.guidance_scale, "height": self.height, "width": self.width,
                "default_steps": self.default_steps}


__all__ = ["LOAD_OPTIONS", "SAMPLERS", "Condition", "DiffusersDenoiser"]
