"""Audio model families for the shared diffusion core: each supplies its conditioning, its network call,
its tensor decode (latents -> waveform) and its rule from seconds to latent size — nothing about
sampling (that is `ponder.modalities.diffusion`).

* `StableAudio` — ``StableAudioPipeline`` (StableAudioDiTModel on Oobleck VAE latents [B, C, L]):
  T5 text embeddings and seconds_start / seconds_end conditioning; sampled with deterministic EDM
  Euler over the cosine-DPM scheduler's sigmas (`ponder.modalities.diffusion.edm`).
* `AudioLDM2` — ``AudioLDM2Pipeline`` (AudioLDM2 UNet on mel-VAE latents [B, C, frames, mel]):
  CLAP + T5 -> projection -> GPT-2 generated context; decoded by the VAE to a mel spectrogram and by
  the HiFi-GAN vocoder to a waveform; sampled with DDIM / Euler over its scheduler.

* `MelDiffusion` — ponder's own ``PonderMelDiffusion`` layout (the ``zoo:tones`` teacher): a diffusers
  ``UNet1DModel`` over a normalised log-mel spectrogram [B, mels, frames], conditioned on tags through a
  small tag encoder, decoded by inverse mel + Griffin-Lim; sampled with DDIM / Euler over its scheduler.

`FAMILIES` maps a pipeline class name (``model_index.json``'s ``_class_name``) to its family; each family
class loads its folder's components with `load_pipeline` (diffusers' pipeline class of that name, unless
the family says otherwise).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ponder.errors import ConfigError, InputError, ModelLoadError, check_number
from ponder.modalities.diffusion.denoiser import Condition
from ponder.modalities.diffusion.edm import COSINE_DPM, CosineEulerEDM
from ponder.modalities.diffusion.samplers import Sampler, make_sampler


def _check_text(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"this text-to-audio model needs a non-empty text prompt, got {prompt!r}")
    return prompt


class _AudioFamily:
    """What every audio family shares: its network, the seconds it makes and its waveform's rate."""

    name: str
    cond_first = False  # guided batches put the unconditional rows first (as both pipelines do)
    default_guidance: float  # the pipeline's default classifier-free guidance scale
    samplers: tuple[str, ...]  # the deterministic samplers that fit the pipeline's scheduler
    net: torch.nn.Module
    sample_rate: int  # Hz of the decoded waveform
    channels: int  # waveform channels: decode_tensor gives [B, T] for 1, [B, C, T] otherwise
    max_seconds: float | None  # the longest audio the model makes (None: no fixed limit)
    seconds: float  # the length chosen at load

    def __init__(self, pipe, net, *, model_name: str):
        self.pipe = pipe
        self.net = net
        self.model_name = model_name

    @classmethod
    def load_pipeline(cls, folder: Path, kind: str, load_kwargs: dict):
        """The folder's components: diffusers' pipeline class `kind` read with `load_kwargs`
        (``local_files_only`` / ``use_safetensors`` / ``torch_dtype``, set by the caller)."""
        import diffusers

        return getattr(diffusers, kind).from_pretrained(str(folder), **load_kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def check_seconds(self, seconds: Any, shortest: float) -> float:
        """`seconds` as a float in [shortest, max_seconds]; a ConfigError naming the bad value otherwise."""
        seconds = check_number("seconds", seconds, minimum=0, open_min=True, what="audio length")
        if not math.isfinite(seconds):
            raise ConfigError(f"seconds must be a finite number (audio length), got {seconds!r}")
        if seconds < shortest:
            raise ConfigError(f"seconds={seconds:g} is shorter than the {shortest:g} s this model can make")
        if self.max_seconds is not None and seconds > self.max_seconds * (1 + 1e-9):
            raise ConfigError(f"seconds={seconds:g} is longer than this model supports (at most "
                              f"{self.max_seconds:g} s)")
        return seconds

    def make_sampler(self, name: str | None) -> Sampler:
        """The deterministic sampler `name` (None: the scheduler's own kind) over the pipeline's scheduler
        config; a ConfigError naming the samplers that fit this family otherwise."""
        if name is not None and name not in self.samplers:
            raise ConfigError(f"sampler {name!r} does not fit the {self.name} family; allowed: "
                              f"{', '.join(self.samplers)}")
        return self.build_sampler(name)

    def build_sampler(self, name: str | None) -> Sampler:
        return make_sampler(name, self.pipe.scheduler)


class StableAudio(_AudioFamily):
    """``StableAudioPipeline``: conditions on the prompt's T5 embeddings (projected, padding zeroed) and on
    the audio's start (0 s) and end (`seconds`) numbers.

    The DiT is called as ``transformer(x [B, C, L], t [B], encoder_hidden_states=[text; start; end]
    [B, L_text + 2, D], global_hidden_states=[start, end] [B, 1, 2D], rotary_embedding)``, where t is
    the v-diffusion time ``atan(sigma) * 2 / pi``. Guidance, as the pipeline without a negative prompt:
    the unconditional row has an all-zero cross-attention context (the null condition the model was
    trained with) and the same seconds. The latent always spans the transformer's ``sample_size``
    frames (the pipeline's rule); `seconds` sets the seconds_end conditioning and where the decoded
    waveform is cut: samples [0, int(seconds * sampling_rate)).
    """

    name = "stable-audio"
    default_guidance = 7.0
    samplers = ("edm-euler",)

    def __init__(self, pipe, *, index: dict, model_name: str, scheduler_config: dict):
        super().__init__(pipe, pipe.transformer, model_name=model_name)
        scheduler_kind = (index.get("scheduler") or [None, None])[1]
        if scheduler_kind != COSINE_DPM:
            raise ModelLoadError(f"{model_name!r}: a StableAudioPipeline with a {scheduler_kind} scheduler is not "
                                 f"supported; ponder samples Stable Audio over a {COSINE_DPM} config")
        self.scheduler_config = scheduler_config
        self.vae = pipe.vae
        self.sample_rate = int(self.vae.config.sampling_rate)
        self.channels = int(self.vae.config.audio_channels)
        self.latent_length = int(self.net.config.sample_size)  # latent frames, whatever the seconds
        self.hop = int(self.vae.hop_length)  # waveform samples per latent frame
        projection = pipe.projection_model.config
        self.max_seconds = min(self.latent_length * self.hop / self.sample_rate, float(projection.max_value))
        if projection.min_value > 0:
            raise ModelLoadError(f"{model_name!r}: the projection's seconds range starts at {projection.min_value}, "
                                 "but the audio starts at 0 s")
        self.rotary_dim = self.net.config.attention_head_dim // 2
        self._rotary: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.seconds = self.max_seconds

    def choose_seconds(self, seconds: float | None) -> float:
        """Validate and keep the audio length (default: the longest the model makes)."""
        self.seconds = self.max_seconds if seconds is None else self.check_seconds(seconds, 1 / self.sample_rate)
        return self.seconds

    def latent_shape(self) -> tuple[int, int]:
        """One row of x: (latent channels, latent frames)."""
        return self.net.config.in_channels, self.latent_length

    def waveform_length(self) -> int:
        """Samples the decoded waveform keeps: the pipeline's int(audio_end_in_s * sampling_rate)."""
        return int(self.seconds * self.sample_rate)

    def build_sampler(self, name: str | None) -> Sampler:
        # the pipeline's scheduler adds noise every step; its deterministic counterpart reads the same config
        return CosineEulerEDM(self.scheduler_config)

    def condition(self, prompt: Any, guided: bool) -> Condition:
        prompt = _check_text(prompt)
        text = self.pipe.encode_prompt(prompt, self.device, False)  # [1, L_text, D], padding rows zero
        start, end = self.pipe.encode_duration(0.0, self.seconds, self.device, False, 1)  # [1, 1, D] each
        context = torch.cat([text, start, end], dim=1)  # [1, L_text + 2, D]
        global_states = torch.cat([start, end], dim=2)  # [1, 1, 2D]
        cond = {"encoder_hidden_states": context, "global_hidden_states": global_states}
        uncond = {"encoder_hidden_states": torch.zeros_like(context), "global_hidden_states": global_states} \
            if guided else None
        return Condition(prompt, cond, uncond, meta={"seconds": self.seconds})

    def rotary(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary (cos, sin) for the global token plus `length` latent frames, as the pipeline builds them."""
        key = (length, str(device))
        if key not in self._rotary:
            from diffusers.models.embeddings import get_1d_rotary_pos_embed

            cos, sin = get_1d_rotary_pos_embed(self.rotary_dim, length + 1, use_real=True,
                                               repeat_interleave_real=False)  # [length + 1, rotary_dim] each
            self._rotary[key] = (cos.to(device), sin.to(device))
        return self._rotary[key]

    def predict(self, x, timestep, cond):
        return self.net(x, timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                        global_hidden_states=cond["global_hidden_states"],
                        rotary_embedding=self.rotary(x.shape[-1], x.device)).sample  # [B, C, L]

    def decode_tensor(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, C, L] -> waveform [B, channels, T] (T = waveform_length), unclamped; gradients pass."""
        wave = self.vae.decode(x0.to(self.vae.dtype)).sample  # [B, channels, L * hop]
        return wave[:, :, : self.waveform_length()]


class AudioLDM2(_AudioFamily):
    """``AudioLDM2Pipeline``: conditions on the prompt through CLAP (pooled text) and T5, projected and
    continued by GPT-2 for ``max_new_tokens`` hidden states; the empty prompt is the unconditional row.

    The UNet is called as ``unet(x [B, C, frames, mel], t [B], encoder_hidden_states=GPT-2 states
    [B, N, D_lm], encoder_hidden_states_1=T5 states [B, L, D_t5], encoder_attention_mask_1=[B, L])``.
    Seconds -> latent size, as the pipeline: ``frames = int(seconds / hop_seconds)`` rounded up to a
    multiple of the VAE factor (hop_seconds = vocoder upsampling / sampling rate), latent
    ``(C, frames / f, mel_bins / f)``; the vocoder's waveform is cut to int(seconds * sampling_rate).
    """

    name = "audioldm2"
    default_guidance = 3.5
    samplers = ("ddim", "euler", "euler-karras")
    max_seconds = None  # a convolutional UNet: any length (the checkpoints were trained on 10 s clips)

    def __init__(self, pipe, *, index: dict, model_name: str, scheduler_config: dict):
        super().__init__(pipe, pipe.unet, model_name=model_name)
        if getattr(pipe.language_model.config, "max_new_tokens", None) is None:
            raise ModelLoadError(f"{model_name!r}: the GPT-2 language model config has no max_new_tokens "
                                 "(how many hidden states it generates for the UNet)")
        self.vae = pipe.vae
        self.vocoder = pipe.vocoder
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        vocoder = self.vocoder.config
        self.sample_rate = int(vocoder.sampling_rate)
        self.channels = 1
        self.mel_bins = int(vocoder.model_in_dim)
        self.hop_seconds = math.prod(vocoder.upsample_rates) / vocoder.sampling_rate  # seconds per mel frame
        self.frames = 0
        self.seconds = 0.0
        self.choose_seconds(None)

    def choose_seconds(self, seconds: float | None) -> float:
        """Validate and keep the audio length (default: the UNet's sample_size, as the pipeline)."""
        if seconds is None:
            seconds = self.net.config.sample_size * self.vae_factor * self.hop_seconds
        else:
            seconds = self.check_seconds(seconds, self.hop_seconds * self.vae_factor)
        frames = int(seconds / self.hop_seconds)
        self.frames = math.ceil(frames / self.vae_factor) * self.vae_factor  # mel frames the VAE decodes
        self.seconds = float(seconds)
        return self.seconds

    def latent_shape(self) -> tuple[int, int, int]:
        """One row of x: (latent channels, latent frames, latent mel bins)."""
        return self.net.config.in_channels, self.frames // self.vae_factor, self.mel_bins // self.vae_factor

    def waveform_length(self) -> int:
        return int(self.seconds * self.sample_rate)

    def condition(self, prompt: Any, guided: bool) -> Condition:
        prompt = _check_text(prompt)
        t5, mask, generated = self.pipe.encode_prompt(prompt, self.device, 1, guided)  # [R, L, D], [R, L], [R, N, D]
        rows = [{"encoder_hidden_states": generated[i:i + 1], "encoder_hidden_states_1": t5[i:i + 1],
                 "encoder_attention_mask_1": mask[i:i + 1]} for i in range(t5.shape[0])]
        # with guidance the pipeline returns the empty prompt's row first, then the prompt's
        return Condition(prompt, rows[-1], rows[0] if guided else None, meta={"seconds": self.seconds})

    def predict(self, x, timestep, cond):
        return self.net(x, timestep, **cond).sample  # [B, C, frames, mel]

    def decode_tensor(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, C, f, m] -> waveform [B, T] (T = waveform_length), unclamped; gradients pass."""
        z = x0.to(self.vae.dtype) / self.vae.config.scaling_factor
        mel = self.vae.decode(z).sample  # [B, 1, frames, mel_bins]
        wave = self.vocoder(mel.squeeze(1).to(self.vocoder.dtype))  # [B, frames * upsampling]
        return wave[:, : self.waveform_length()]


MEL_DIFFUSION = "PonderMelDiffusion"  # model_index.json "_class_name" of ponder's own mel-diffusion layout


class MelPipeline:
    """The components of a ``PonderMelDiffusion`` folder (what `MelDiffusion` drives): ``unet``
    (UNet1DModel), ``scheduler`` (DDIMScheduler), ``tag_encoder`` (`mel.TagEncoder`), ``mel``
    (`mel.MelSettings`) and ``decoder`` (`mel.MelDecoder`, no weights)."""

    def __init__(self, unet, scheduler, tag_encoder, mel):
        from ponder.modalities.music.mel import MelDecoder

        self.unet, self.scheduler, self.tag_encoder, self.mel = unet, scheduler, tag_encoder, mel
        self.decoder = MelDecoder(mel)

    @property
    def components(self) -> dict[str, Any]:
        return {"unet": self.unet, "scheduler": self.scheduler, "tag_encoder": self.tag_encoder,
                "decoder": self.decoder}

    def to(self, device) -> MelPipeline:
        for module in (self.unet, self.tag_encoder, self.decoder):
            module.to(device)
        return self


class MelDiffusion(_AudioFamily):
    """ponder's own ``PonderMelDiffusion`` layout: diffusion over a log-mel spectrogram, conditioned on tags.

    No diffusers pipeline class reads this folder; ponder loads it (`load_pipeline`), every weight with
    ``local_files_only=True`` and safetensors::

        model_index.json              {"_class_name": "PonderMelDiffusion", "unet": ["diffusers", "UNet1DModel"],
                                       "scheduler": ["diffusers", "DDIMScheduler"], "tag_encoder": ["ponder",
                                       "TagEncoder"], "mel": "mel.json"}
        unet/                         diffusers UNet1DModel (config.json + diffusion_pytorch_model.safetensors)
        scheduler/scheduler_config.json   DDIMScheduler config (what the shared samplers read)
        tag_encoder/                  config.json (tag groups, width D) + model.safetensors (`mel.TagEncoder`)
        mel.json                      `mel.MelSettings`: sample rate, STFT / mel bands, log10 scaling, length,
                                      Griffin-Lim iterations

    The latent is the normalised log-mel x [B, n_mels, frames] (`ponder.modalities.music.mel`). The UNet
    is called as ``unet(cat([x, tags], 1) [B, n_mels + D, frames], t [B]) -> [B, n_mels, frames]``, where
    ``tags`` is the prompt's tag-encoder vector [B, D] repeated over the frames: diffusers' UNet1DModel
    takes no conditioning argument, so the tags enter as input channels. Prompts are tag strings
    (``"pluck, high, fast"``, any subset, at most one per group); ``""`` is the unconditional (null) row,
    which classifier-free guidance contrasts with (the recipe drops tags in training to learn it).
    Two optional keys of ``model_index.json`` set the loaded model's defaults: ``default_guidance_scale``
    (1.0 for a guidance-distilled student such as ``zoo:tones-cm``) and ``default_steps`` (1 for a one-step
    student); ``--guidance-scale`` / ``--steps`` still override them.
    Seconds -> latent size: `MelSettings.frames_for` (any length: the UNet is convolutional; trained on
    ``mel.seconds``); the decode (inverse mel + Griffin-Lim, `mel.MelDecoder`) is cut to
    ``int(seconds * sample_rate)`` samples.
    """

    name = "mel-diffusion"
    default_guidance = 2.0
    samplers = ("ddim", "euler", "euler-karras")
    max_seconds = None  # convolutional in time: any length
    channels = 1

    def __init__(self, pipe: MelPipeline, *, index: dict, model_name: str, scheduler_config: dict):
        super().__init__(pipe, pipe.unet, model_name=model_name)
        # 1.0: a guidance-distilled student
        guidance = index.get("default_guidance_scale", type(self).default_guidance)
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 1:
            raise ModelLoadError(f"{model_name!r}: model_index.json's default_guidance_scale must be a number >= 1, "
                                 f"got {guidance!r}")
        self.default_guidance = float(guidance)
        steps = index.get("default_steps", 20)  # 1: a one-step (consistency) student
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ModelLoadError(f"{model_name!r}: model_index.json's default_steps must be an integer >= 1, "
                                 f"got {steps!r}")
        self.default_steps = steps
        self.mel = pipe.mel
        self.tag_encoder = pipe.tag_encoder
        self.decoder = pipe.decoder
        self.sample_rate = self.mel.sample_rate
        config = self.net.config
        if config.in_channels != self.mel.n_mels + self.tag_encoder.dim or config.out_channels != self.mel.n_mels:
            raise ModelLoadError(f"{model_name!r}: the UNet maps {config.in_channels} -> {config.out_channels} "
                                 f"channels, but {self.mel.n_mels} mel bands and {self.tag_encoder.dim} tag "
                                 f"channels need {self.mel.n_mels + self.tag_encoder.dim} -> {self.mel.n_mels}")
        self.frames = 0
        self.seconds = 0.0
        self.choose_seconds(None)

    @classmethod
    def load_pipeline(cls, folder: Path, kind: str, load_kwargs: dict) -> MelPipeline:
        """Read the folder's UNet1DModel, DDIMScheduler config, tag encoder and mel.json (layout: the class
        docstring); a ModelLoadError names the part that is missing or malformed."""
        from diffusers import DDIMScheduler, UNet1DModel

        from ponder.modalities.music.mel import MelSettings, TagEncoder

        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        if index.get("unet") != ["diffusers", "UNet1DModel"]:
            raise ModelLoadError(f"{str(folder)!r}: a {MEL_DIFFUSION} folder has a diffusers UNet1DModel as its "
                                 f"unet, model_index.json says {index.get('unet')}")
        dtype = load_kwargs.get("torch_dtype")
        unet = UNet1DModel.from_pretrained(str(folder / "unet"), local_files_only=True, use_safetensors=True,
                                           **({"torch_dtype": dtype} if dtype is not None else {}))
        scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        if scheduler_config.get("_class_name") != "DDIMScheduler":
            raise ModelLoadError(f"{str(folder)!r}: a {MEL_DIFFUSION} folder ships a DDIMScheduler config, got "
                                 f"{scheduler_config.get('_class_name')}")
        scheduler = DDIMScheduler.from_config(scheduler_config)
        return MelPipeline(unet, scheduler, TagEncoder.load(folder / "tag_encoder", dtype),
                           MelSettings.load(folder / "mel.json"))

    def choose_seconds(self, seconds: float | None) -> float:
        """Validate and keep the audio length (default: the length trained on, ``mel.seconds``)."""
        if seconds is None:
            seconds = self.mel.seconds
        else:
            seconds = self.check_seconds(seconds, self.mel.hop_length * self.mel.frame_multiple / self.sample_rate)
        self.frames = self.mel.frames_for(seconds)
        self.seconds = float(seconds)
        return self.seconds

    def latent_shape(self) -> tuple[int, int]:
        """One row of x: (mel bands, frames)."""
        return self.mel.n_mels, self.frames

    def waveform_length(self) -> int:
        return int(self.seconds * self.sample_rate)

    def condition(self, prompt: Any, guided: bool) -> Condition:
        tags = self.tag_encoder.parse(prompt)  # InputError for an unknown tag
        with torch.no_grad():  # weights are frozen; the rows are constants of the sampling chain
            row = self.tag_encoder(self.tag_encoder.multi_hot([tags])).to(self.net.dtype)  # [1, D]
            null = self.tag_encoder(self.tag_encoder.multi_hot([[]])).to(self.net.dtype)  # [1, D]
        # the empty prompt is the unconditional row itself: no guidance pair to batch
        return Condition(prompt, {"tags": row}, {"tags": null} if guided and tags else None,
                         meta={"seconds": self.seconds, "tags": tags})

    def predict(self, x, timestep, cond):
        tags = cond["tags"][:, :, None].expand(-1, -1, x.shape[-1])  # [B, D, frames]
        return self.net(torch.cat([x, tags.to(x.dtype)], dim=1), timestep).sample  # [B, n_mels, frames]

    def decode_tensor(self, x0: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel [B, n_mels, frames] -> waveform [B, T] (T = waveform_length), unclamped;
        gradients pass (inverse mel + Griffin-Lim)."""
        return self.decoder(x0)[:, : self.waveform_length()]


# pipeline class (model_index.json "_class_name") -> its family
FAMILIES: dict[str, type[_AudioFamily]] = {
    "StableAudioPipeline": StableAudio,
    "AudioLDM2Pipeline": AudioLDM2,
    MEL_DIFFUSION: MelDiffusion,
}

__all__ = ["FAMILIES", "MEL_DIFFUSION", "AudioLDM2", "MelDiffusion", "MelPipeline", "StableAudio"]
