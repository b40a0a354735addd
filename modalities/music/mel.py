"""The pieces of ponder's mel-diffusion layout (``PonderMelDiffusion``): spectrogram settings, the tag encoder
and the differentiable mel -> waveform decode. The family that drives them is
`ponder.modalities.music.families.MelDiffusion`; the recipe that trains them is `ponder.modalities.music.train`.

**Spectrogram** (`MelSettings`, saved as ``mel.json``): a magnitude mel spectrogram (torchaudio
``MelSpectrogram``: periodic Hann window of ``n_fft`` samples, centred frames every ``hop_length`` samples,
HTK mel scale, unnormalised triangular filters, power 1), ``log10`` of it clamped to
``[log10_min, log10_max]`` and mapped linearly onto ``[-1, 1]``:

    x = 2 (clamp(log10 mel, log10_min, log10_max) - log10_min) / (log10_max - log10_min) - 1

With the defaults (16 kHz, n_fft 1024, hop 256, 64 bands, log10 range [-4, 3]) a tones clip at -1 dBFS
peaks at ~10^2.5 (x ~ 0.86) and silence sits at the floor 10^-4 (x = -1, 80 dB below a unit-magnitude band).
A clip of ``seconds`` becomes ``frames_for(seconds)`` frames: ``seconds * sample_rate / hop_length + 1``
rounded up to a multiple of ``frame_multiple`` (the UNet halves the time axis), the waveform zero-padded
to ``(frames - 1) * hop_length`` samples first (4 s: 252 frames, 64 256 samples, with frame_multiple 4).

**Decode** (`MelDecoder`): the inverse map to a magnitude mel, torchaudio ``InverseMelScale`` (least
squares onto the ``n_fft / 2 + 1`` STFT bins, then ReLU), then the phase: torchaudio ``griffinlim``
(``griffin_lim_iters`` iterations, momentum ``griffin_lim_momentum``, ``rand_init=False``: the phase starts
at zero, so the decode is a deterministic function of x) runs WITHOUT gradients, and the waveform is the
inverse STFT of the magnitude with the phase of that Griffin-Lim signal (one more Griffin-Lim projection).
Gradients flow through the magnitude path (denormalise, inverse mel, inverse STFT) with the phase held
fixed: the loss's dependence on the phase recovery is dropped. That is what makes noise optimisation
affordable here (measured, one thread: backpropagating through 32 Griffin-Lim iterations costs 0.46 s per
4 s clip; the fixed-phase backward ~5 ms, on top of the no-grad forward) and it changes little for the
controls, which read magnitudes. The value is the same with and without gradients. Values of x outside
[-1, 1] are clamped first (outside the data's range by construction; they get no gradient). Iterations:
8 by default. On 32 held-out clips through features -> decode, the bench's measurements hardly move with
them (judge timbre / register / tempo accuracy 0.81 / 1.00 / 0.78 at 8 iterations, 0.84 / 1.00 / 0.78 at 32;
pitch-class accuracy 0.92 vs 0.90; loudness correlation 0.964 vs 0.967), while each iteration costs
~4 ms per 4 s clip (one thread): ~40 ms per clip at 8, ~0.13-0.16 s at 32. Set ``griffin_lim_iters`` in
``mel.json`` for more. A 20-step guided sample of the zoo teacher (40 UNet rows) costs ~0.45 s.

**Tag encoder** (`TagEncoder`, saved as ``tag_encoder/config.json`` + ``tag_encoder/model.safetensors``):
tag groups (``timbre``, ``register``, ``tempo``, each word one of `tones.TAG_VOCAB`), an embedding per tag
[V, D] and a learned null vector [D]; a prompt of tags embeds as ``null + sum of its tags' embeddings``, the
empty prompt as ``null`` alone (the unconditional branch that classifier-free guidance contrasts with).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ponder.errors import InputError, ModelLoadError, check_int, check_number


@dataclass(frozen=True)
class MelSettings:
    """The spectrogram the model lives on (``mel.json``); validated on construction."""

    sample_rate: int = 16000  # Hz of the waveform: the tones clips' rate
    n_fft: int = 1024  # 64 ms frames: the controls' analysis frame at 16 kHz, ~16 Hz per STFT bin
    hop_length: int = 256  # 16 ms hop: 62.5 frames a second, finer than the fastest sixteenth (100 ms)
    n_mels: int = 64  # bands from f_min to f_max: the UNet's channels
    f_min: float = 0.0
    f_max: float = 8000.0  # Nyquist: tones keeps no partial above 7 kHz
    log10_min: float = -4.0  # the floor (silence) -> x = -1
    log10_max: float = 3.0  # -> x = +1; the loudest band of a -1 dBFS clip is ~10^2.5
    seconds: float = 4.0  # the clip length trained on: the default audio length
    frame_multiple: int = 4  # latent frames are a multiple of this: 2 ** (UNet levels - 1)
    griffin_lim_iters: int = 8  # phase-recovery iterations of the decode (4-32 measure alike: module docstring)
    griffin_lim_momentum: float = 0.99  # fast Griffin-Lim (Perraudin et al. 2013)

    def __post_init__(self):
        check_int("sample_rate", self.sample_rate, minimum=1000)
        check_int("n_fft", self.n_fft, minimum=16)
        check_int("hop_length", self.hop_length, maximum=self.n_fft, what="at most n_fft")
        check_int("n_mels", self.n_mels, minimum=2)
        check_number("f_min", self.f_min, minimum=0.0)
        check_number("f_max", self.f_max, minimum=self.f_min, maximum=self.sample_rate / 2, open_min=True,
                     what="above f_min and at most Nyquist")
        check_number("log10_max", self.log10_max, minimum=self.log10_min, open_min=True, what="above log10_min")
        check_number("seconds", self.seconds, minimum=0.0, open_min=True)
        check_int("frame_multiple", self.frame_multiple)
        check_int("griffin_lim_iters", self.griffin_lim_iters)
        check_number("griffin_lim_momentum", self.griffin_lim_momentum, minimum=0.0, maximum=1.0, open_max=True)

    def frames_for(self, seconds: float) -> int:
        """Latent frames for `seconds` of audio: centred frames covering it, rounded up to `frame_multiple`."""
        frames = math.ceil(seconds * self.sample_rate / self.hop_length) + 1
        return math.ceil(frames / self.frame_multiple) * self.frame_multiple

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> MelSettings:
        """Read ``mel.json``; a ModelLoadError naming unknown keys or bad values."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"cannot read the spectrogram settings {path}: {err}") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else data
            raise ModelLoadError(f"{path}: unknown spectrogram settings {extra}; known: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except Exception as err:  # a ConfigError from the checks: the folder is at fault, not the caller
            raise ModelLoadError(f"{path}: {err}") from None


def mel_transform(mel: MelSettings):
    """The torchaudio ``MelSpectrogram`` of `mel` (magnitude, HTK scale, unnormalised filters)."""
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=mel.sample_rate, n_fft=mel.n_fft, hop_length=mel.hop_length, n_mels=mel.n_mels,
        f_min=mel.f_min, f_max=mel.f_max, power=1.0, norm=None, mel_scale="htk")


def normalise(magnitude: torch.Tensor, mel: MelSettings) -> torch.Tensor:
    """Magnitude mel [..., n_mels, frames] -> x in [-1, 1] (the fixed log10 scaling of the module docstring)."""
    log_mag = torch.log10(magnitude.clamp(min=10.0 ** mel.log10_min)).clamp(max=mel.log10_max)
    return 2.0 * (log_mag - mel.log10_min) / (mel.log10_max - mel.log10_min) - 1.0


def denormalise(x: torch.Tensor, mel: MelSettings) -> torch.Tensor:
    """x [..., n_mels, frames] (clamped to [-1, 1]) -> magnitude mel, the inverse of `normalise`."""
    log_mag = mel.log10_min + (x.clamp(-1.0, 1.0) + 1.0) * 0.5 * (mel.log10_max - mel.log10_min)
    return torch.pow(10.0, log_mag)


def features(waves: torch.Tensor, mel: MelSettings, seconds: float | None = None,
             transform=None) -> torch.Tensor:
    """Waveforms [B, T] -> normalised log-mel [B, n_mels, frames_for(seconds)] (each zero-padded or cut to
    ``(frames - 1) * hop_length`` samples first; `seconds` defaults to the settings' own)."""
    frames = mel.frames_for(mel.seconds if seconds is None else seconds)
    length = (frames - 1) * mel.hop_length
    waves = waves[:, :length]
    waves = torch.nn.functional.pad(waves, (0, length - waves.shape[-1]))  # [B, length]
    transform = transform or mel_transform(mel)
    return normalise(transform(waves.float()), mel)  # [B, n_mels, frames]


class MelDecoder(torch.nn.Module):
    """x [B, n_mels, frames] -> waveform [B, (frames - 1) * hop_length]: `denormalise`, ``InverseMelScale``,
    then the inverse STFT with the phase of a deterministic Griffin-Lim run (no parameters). Differentiable
    in x with the phase held fixed (the module docstring says why)."""

    def __init__(self, mel: MelSettings):
        super().__init__()
        import torchaudio

        self.mel = mel
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=mel.n_fft // 2 + 1, n_mels=mel.n_mels, sample_rate=mel.sample_rate, f_min=mel.f_min,
            f_max=mel.f_max, norm=None, mel_scale="htk")
        self.n_iter = mel.griffin_lim_iters
        self.momentum = mel.griffin_lim_momentum
        self.register_buffer("window", torch.hann_window(mel.n_fft), persistent=False)

    def phase(self, linear: torch.Tensor, length: int) -> torch.Tensor:
        """Unit complex phase [B, bins, F] of Griffin-Lim's signal for magnitudes `linear` (no gradient)."""
        import torchaudio

        n_fft, hop = self.mel.n_fft, self.mel.hop_length
        window = self.window.to(linear.device)
        with torch.no_grad():
            wave = torchaudio.functional.griffinlim(linear.detach(), window, n_fft, hop, n_fft, 1.0, self.n_iter,
                                                    self.momentum, length, False)  # rand_init=False
            spec = torch.stft(wave, n_fft, hop, n_fft, window, center=True, pad_mode="reflect",
                              return_complex=True)  # [B, bins, F]
        return spec / spec.abs().clamp(min=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        magnitude = denormalise(x.float(), self.mel)  # [B, n_mels, F]
        linear = self.inverse_mel(magnitude)  # [B, n_fft / 2 + 1, F]
        length = (x.shape[-1] - 1) * self.mel.hop_length
        phase = self.phase(linear, length)
        return torch.istft(linear * phase, self.mel.n_fft, self.mel.hop_length, self.mel.n_fft,
                           self.window.to(linear.device), center=True, length=length)  # [B, length]


TAG_SEPARATORS = re.compile(r"[,\s]+")


class TagEncoder(torch.nn.Module):
    """Tags -> one conditioning vector: ``null + sum of the prompt's tag embeddings`` ([D]).

    Args:
        groups: ``[[group, [tag, ...]], ...]`` in a fixed order; a prompt holds at most one tag per group.
        dim: the embedding width D (the UNet reads it as D extra input channels).
    """

    def __init__(self, groups: list[list], dim: int):
        super().__init__()
        self.groups = [(str(g), [str(t) for t in tags]) for g, tags in groups]
        self.vocab = [t for _, tags in self.groups for t in tags]
        if len(set(self.vocab)) != len(self.vocab) or not self.vocab:
            raise ModelLoadError(f"tag groups must name distinct tags, got {self.groups}")
        self.group_of = {t: g for g, tags in self.groups for t in tags}
        self.dim = check_int("dim", dim, what="tag embedding width")
        self.embedding = torch.nn.Parameter(torch.randn(len(self.vocab), dim))  # [V, D]
        self.null = torch.nn.Parameter(torch.zeros(dim))  # [D]

    def parse(self, prompt) -> list[str]:
        """A prompt (tags separated by commas and / or spaces: ``"pluck, high, fast"``) -> its tags; ``""`` -> []
        (unconditional). An InputError names an unknown tag (listing the vocabulary) or two tags of one group."""
        if not isinstance(prompt, str):
            raise InputError(f"this model is prompted with tags (e.g. 'pluck, high, fast'; '' for none), "
                             f"got {prompt!r}")
        words = [w for w in TAG_SEPARATORS.split(prompt.strip()) if w]
        seen: dict[str, str] = {}
        for word in words:
            if word not in self.group_of:
                raise InputError(f"unknown tag {word!r} in prompt {prompt!r}; the tags are: {', '.join(self.vocab)} "
                                 f"(at most one per group: "
                                 + "; ".join(f"{g}: {'/'.join(tags)}" for g, tags in self.groups)
                                 + "; an empty prompt is unconditional)")
            group = self.group_of[word]
            if group in seen:
                raise InputError(f"prompt {prompt!r} gives two {group} tags ({seen[group]!r} and {word!r}); "
                                 f"give at most one of {', '.join(dict(self.groups)[group])}")
            seen[group] = word
        return words

    def multi_hot(self, tag_lists: list[list[str]]) -> torch.Tensor:
        """Lists of known tags -> [B, V] float 0/1 rows over `vocab`."""
        out = torch.zeros(len(tag_lists), len(self.vocab), device=self.null.device)
        for row, tags in enumerate(tag_lists):
            for tag in tags:
                out[row, self.vocab.index(tag)] = 1.0
        return out

    def forward(self, multi_hot: torch.Tensor) -> torch.Tensor:
        """[B, V] 0/1 -> [B, D]; an all-zero row is the unconditional `null`."""
        return self.null + multi_hot.to(self.embedding.dtype) @ self.embedding

    def encode(self, prompt) -> torch.Tensor:
        """One prompt -> its conditioning row [1, D] (``""``: the null row)."""
        return self(self.multi_hot([self.parse(prompt)]))

    # -- the folder -------------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write ``folder/config.json`` (groups, dim) and ``folder/model.safetensors`` (embedding, null)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(
            {"_class_name": "TagEncoder", "groups": [[g, tags] for g, tags in self.groups], "dim": self.dim},
            indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype | None = None) -> TagEncoder:
        """Read a tag encoder folder (config.json + model.safetensors); a ModelLoadError if it is not one."""
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
            state = load_file(str(folder / "model.safetensors"))
            encoder = cls(config["groups"], config["dim"])
            encoder.load_state_dict(state)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ModelLoadError(f"cannot load the tag encoder in {str(folder)!r}: {err}") from None
        return encoder.to(dtype) if dtype is not None else encoder


__all__ = ["MelDecoder", "MelSettings", "TagEncoder", "denormalise", "features", "mel_transform", "normalise"]
