"""Music controls: differentiable losses on the output waveform, usable as verifiers and as DITTO's objective.

Paper: Novack, McAuley, Berg-Kirkpatrick and Bryan 2024, "DITTO: Diffusion Inference-Time T-Optimization
for Music Generation". DITTO steers a frozen music diffusion model by optimising its initial noise against
a differentiable feature-matching loss of the output: intensity, melody, musical structure, inpainting,
outpainting and looping. Each control here is one such loss; as a `DifferentiableVerifier` its score is
``-loss`` (higher is better), so the same object ranks best-of-N candidates, guides the noise searches, and
is the objective of the ``ditto`` / ``ditto-2`` strategies (``score_tensor`` on ``decode_tensor``'s
waveforms).

Waveforms are [N, T] (mono) or [N, C, T] (channels are averaged) in [-1, 1] at the control's sample
rate. The analysis frame is the power of two nearest 46 ms (`frame_size`: 1024 samples at 16-24 kHz,
2048 at 44.1 / 48 kHz) with a hop of a quarter frame; STFTs use a periodic Hann window, centred frames
(reflect padding), and an amplitude calibration so that a full-scale sine has power ~1 in its bin.

* `Intensity` — frame RMS in dBFS, smoothed, against a target curve: mean squared (or L1) dB error.
* `Melody` — soft chroma per frame against the reference's pitch class: cross-entropy.
* `Structure` — section self-similarity of frame features against a form such as ``AABA``: MSE.
* `Inpaint`, `Outpaint`, `Loop` — log-mel L1 between the output and a reference (or its own start).
* `TextAdherence` — CLAP cosine similarity of the audio and a text (a local ``ClapModel`` folder).
* `Weighted` — a weighted sum of controls' scores; `parse_control` / `parse_controls` build them from
  the ``NAME=VALUE`` form of the CLI.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from ponder.errors import ConfigError, InputError, ModelLoadError, check_int, check_number
from ponder.search.core import Audio

CONTROL_NAMES = ("intensity", "melody", "structure", "inpaint", "outpaint", "loop", "text")
POWER_FLOOR = 1e-10  # -100 dB: the floor under every power before a log (keeps log and its gradient finite)
LOG_MEL_FLOOR = 1e-5  # -50 dB under a full-scale sine: quieter mel bands count as silence in mel L1 losses


# ---- shared signal helpers ---------------------------------------------------------------------------------


def frame_size(sample_rate: int) -> int:
    """The analysis window in samples: the power of two nearest 46 ms (2048 at 44.1 kHz, 1024 at 16 kHz)."""
    return 2 ** max(6, round(math.log2(sample_rate * 0.046)))


def to_mono(x: torch.Tensor, what: str = "waveform") -> torch.Tensor:
    """[N, T] or [N, C, T] -> [N, T] float32 (channels averaged); an InputError for any other shape."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or x.shape[-1] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"a music control scores {what}s shaped [N, T] or [N, C, T], got {shape}")
    x = x.float()
    return x.mean(1) if x.dim() == 3 else x  # [N, T]


def power_spectrogram(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Amplitude-calibrated STFT power of [N, T] waveforms -> [N, n_fft // 2 + 1, frames].

    Centred Hann frames; magnitudes are divided by half the window sum, so a sine of amplitude A has
    power ~A^2 in its peak bin (floors below are relative to full scale).
    """
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    power = torchaudio.functional.spectrogram(wave, pad=0, window=window, n_fft=n_fft, hop_length=hop,
                                              win_length=n_fft, power=2.0, normalized=False)
    return power / (window.sum() / 2) ** 2  # [N, bins, frames]


def chroma_filterbank(n_fft: int, sample_rate: int, fmin: float, fmax: float) -> torch.Tensor:
    """Weights spreading STFT bins over the 12 pitch classes (C = 0) -> [12, n_fft // 2 + 1].

    A bin at (fractional) MIDI pitch p within [fmin, fmax] gives ``max(0, 1 - d)`` to class c, d the
    circular distance of p and c in semitones: linear interpolation on the pitch circle.
    """
    freqs = torch.fft.rfftfreq(n_fft, 1 / sample_rate, dtype=torch.float64)  # [bins]
    in_band = (freqs >= fmin) & (freqs <= min(fmax, sample_rate / 2))
    pitch = 69 + 12 * torch.log2(freqs.clamp(min=1e-6) / 440)  # [bins] MIDI pitch of each bin
    distance = (pitch[None] - torch.arange(12, dtype=torch.float64)[:, None]) % 12  # [12, bins]
    distance = torch.minimum(distance, 12 - distance)
    return ((1 - distance).clamp(min=0) * in_band).float()


def _check_clip(control: str, wave: torch.Tensor, sample_rate: int, minimum: int) -> int:
    samples = wave.shape[-1]
    if samples < minimum:
        raise InputError(f"the {control} control needs clips of at least {minimum} samples "
                         f"({minimum / sample_rate:.3f} s at {sample_rate} Hz), got {samples}")
    return samples


def read_audio(path: str | Path, sample_rate: int, *, what: str = "reference") -> torch.Tensor:
    """A WAV (any format soundfile reads) as a mono float waveform at `sample_rate` -> [T].

    Channels are averaged; a file at another rate is resampled with torchaudio.functional.resample.
    An InputError names the file when it is missing, not audio, or empty.
    """
    try:
        import soundfile
    except ImportError:
        raise ConfigError(f"reading the {what} {str(path)!r} needs the soundfile package (pip install soundfile)") \
            from None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the {what} {str(path)!r} is not a file")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except (RuntimeError, ValueError, TypeError) as err:  # LibsndfileError is a RuntimeError
        raise InputError(f"the {what} {str(path)!r} is not audio soundfile can read (WAV, FLAC, OGG …): {err}") \
            from None
    if data.shape[0] == 0:
        raise InputError(f"the {what} {str(path)!r} holds no samples")
    wave = torch.from_numpy(data).mean(1)  # [T]
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, int(rate), sample_rate)
    return wave


def audio_waves(outputs: Sequence[Any], sample_rate: int, control: str) -> list[torch.Tensor]:
    """Mono float waveforms [T] of `Audio` outputs, resampled to `sample_rate` where theirs differs."""
    waves = []
    for out in outputs:
        if not isinstance(out, Audio):
            raise InputError(f"the {control} control scores Audio outputs, got a {type(out).__name__}")
        wave = torch.as_tensor(out.waveform).float()
        if wave.dim() not in (1, 2) or wave.shape[-1] == 0:
            raise InputError(f"the {control} control scores waveforms [T] or [C, T], got shape {tuple(wave.shape)}")
        wave = wave.mean(0) if wave.dim() == 2 else wave  # [T]
        if out.sample_rate != sample_rate:
            wave = torchaudio.functional.resample(wave, int(out.sample_rate), sample_rate)
        waves.append(wave)
    return waves


def score_waves(verifier, prompt: Any, waves: list[torch.Tensor]) -> torch.Tensor:
    """`verifier.score_tensor` over [T] waveforms: one batch when their lengths agree, else one by one. -> [N]"""
    if not waves:
        return torch.zeros(0)
    with torch.no_grad():
        if len({int(w.shape[-1]) for w in waves}) == 1:
            return verifier.score_tensor(prompt, torch.stack(waves)).float()
        return torch.cat([verifier.score_tensor(prompt, w[None]).float() for w in waves])


def _resample_curve(values: torch.Tensor, frames: int) -> torch.Tensor:
    """A [K] curve stretched linearly (end points kept) onto `frames` points -> [frames]."""
    if values.numel() == 1:
        return values.expand(frames)
    return F.interpolate(values[None, None], size=frames, mode="linear", align_corners=True)[0, 0]


def _frame_times(frames: int, hop: int, samples: int) -> torch.Tensor:
    """Each frame's centre as a fraction of the clip, in [0, 1) -> [frames]."""
    return (torch.arange(frames, dtype=torch.float64) * hop / samples).clamp(max=1 - 1e-9)


# ---- the controls ------------------------------------------------------------------------------------------


class Control(ABC):
    """A differentiable loss on waveforms that is also a verifier: ``score = -loss`` (DITTO, Novack et al. 2024).

    `score_tensor(prompt, x)` takes waveforms [N, T] or [N, C, T] at `sample_rate` (channels averaged) and
    is differentiable in x. `score(prompt, outputs)` takes `Audio` outputs, resamples any whose rate
    differs from the control's (torchaudio.functional.resample), and returns `score_tensor` of the
    stacked waveforms (clips of unequal length are scored one by one).
    """

    name = "control"

    def __init__(self, sample_rate: int):
        self.sample_rate = check_int("sample_rate", sample_rate, what="samples per second")
        self.n_fft = frame_size(self.sample_rate)
        self.hop = self.n_fft // 4

    @abstractmethod
    def loss(self, wave: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        """The control's loss of mono waveforms [N, T] -> [N] (lower is better), differentiable."""

    def score_tensor(self, prompt: Any, x: torch.Tensor) -> torch.Tensor:
        """``-loss`` of waveforms [N, T] or [N, C, T] -> [N], differentiable."""
        return -self.loss(to_mono(x), prompt)

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        """``-loss`` of `Audio` outputs (resampled to the control's rate) -> [N]."""
        return score_waves(self, prompt, audio_waves(outputs, self.sample_rate, self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, sample_rate={self.sample_rate})"


class _MelControl(Control):
    """A control comparing log-mel spectrograms: `n_mels` triangular bands on the Slaney mel scale from 0 Hz to
    Nyquist, each the weighted mean power of its STFT bins (frames of `frame_size`, hop a quarter)."""

    def __init__(self, sample_rate: int, n_mels: int = 64):
        super().__init__(sample_rate)
        self.n_mels = check_int("n_mels", n_mels, minimum=1, maximum=self.n_fft // 2)
        fb = torchaudio.functional.melscale_fbanks(self.n_fft // 2 + 1, 0.0, self.sample_rate / 2, self.n_mels,
                                                   self.sample_rate, norm=None, mel_scale="slaney")  # [bins, mels]
        # each band is the triangle-weighted mean power of its bins, so LOG_MEL_FLOOR means the same in every band
        self.mel_fb = fb / fb.sum(0).clamp(min=1e-12)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Log mel power of [N, T] waveforms -> [N, n_mels, frames] (natural log, floored at LOG_MEL_FLOOR)."""
        power = power_spectrogram(wave, self.n_fft, self.hop)  # [N, bins, frames]
        mel = torch.einsum("bm,nbf->nmf", self.mel_fb.to(power), power)  # [N, mels, frames]
        return torch.log(mel + LOG_MEL_FLOOR)


class Intensity(Control):
    """Loudness over time (DITTO's intensity control, Novack et al. 2024).

    Feature: frame RMS of the waveform in dBFS, ``10 log10(mean(x^2) + 1e-10)`` over centred frames of
    `frame_size` samples (hop a quarter frame; 0 dBFS is RMS 1, a full-scale sine is -3 dBFS), smoothed
    with a moving average of `smooth_s` seconds. Target: `target_db`, a list of dBFS values of any
    length, stretched linearly over the clip's frames (first value at the first frame, last at the last).
    Loss: mean over frames of the squared dB error (``norm="l2"``) or the absolute dB error (``"l1"``).
    """

    name = "intensity"

    def __init__(self, target_db: Sequence[float], sample_rate: int, *, smooth_s: float = 0.1, norm: str = "l2"):
        super().__init__(sample_rate)
        values = _numbers("intensity target", target_db)
        if max(values) > 0:
            raise ConfigError(f"intensity target values are dBFS (<= 0: RMS of a waveform in [-1, 1]), "
                              f"got {max(values)}")
        if norm not in ("l1", "l2"):
            raise ConfigError(f"intensity norm must be 'l1' or 'l2', got {norm!r}")
        self.target_db = torch.tensor(values, dtype=torch.float32)  # [K]
        self.norm = norm
        smooth_s = check_number("smooth_s", smooth_s, minimum=0.0, what="seconds of smoothing")
        self.smooth_frames = 2 * round(smooth_s * self.sample_rate / self.hop / 2) + 1  # odd width

    def curve(self, wave: torch.Tensor) -> torch.Tensor:
        """Smoothed frame RMS in dBFS of [N, T] waveforms -> [N, frames]."""
        _check_clip(self.name, wave, self.sample_rate, self.n_fft)
        padded = F.pad(wave[:, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")[:, 0]  # [N, T + n_fft]
        frames = padded.unfold(-1, self.n_fft, self.hop)  # [N, F, n_fft]
        db = 10 * torch.log10(frames.pow(2).mean(-1) + POWER_FLOOR)  # [N, F]
        if self.smooth_frames > 1:
            half = self.smooth_frames // 2
            db = F.avg_pool1d(F.pad(db[:, None], (half, half), mode="replicate"), self.smooth_frames, stride=1)[:, 0]
        return db

    def loss(self, wave: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        db = self.curve(wave)  # [N, F]
        error = db - _resample_curve(self.target_db.to(db), db.shape[-1])  # [N, F]
        return (error.pow(2) if self.norm == "l2" else error.abs()).mean(-1)


class Melody(Control):
    """Pitch class over time against a reference melody (DITTO's melody control, Novack et al. 2024).

    Feature: soft chroma per frame. STFT power (window 2 x `frame_size` for semitone resolution at low
    pitches, hop a quarter `frame_size`) of the bins between `fmin` and `fmax` is spread over the 12
    pitch classes (C = 0) by linear interpolation on the pitch circle (a bin at MIDI pitch p gives
    weight ``max(0, 1 - d)`` to class c, d the circular distance of p and c in semitones); the soft
    chroma is that energy normalised per frame (``softmax(log(chroma + 1e-10))``).
    Target: a pitch class per frame, either the argmax chroma of a reference waveform (its frames
    stretched onto the clip's by time; frames more than 40 dB below the reference's loudest carry no
    pitch and are left out), or a list of MIDI notes spread evenly over the clip.
    Loss: mean over target frames of the cross-entropy ``-log chroma[target class]``.
    """

    name = "melody"

    def __init__(self, target: torch.Tensor | np.ndarray | Sequence[int], sample_rate: int, *, fmin: float = 110.0,
                 fmax: float = 4200.0):
        super().__init__(sample_rate)
        fmin = check_number("fmin", fmin, minimum=0.0, open_min=True, what="Hz")
        fmax = check_number("fmax", fmax, minimum=fmin, open_min=True, what="Hz")
        self.chroma_fft = 2 * self.n_fft
        self.chroma_fb = chroma_filterbank(self.chroma_fft, self.sample_rate, fmin, fmax)  # [12, bins]
        if isinstance(target, (torch.Tensor, np.ndarray)):
            self._target_from_wave(torch.as_tensor(target))
        else:
            notes = _numbers("melody notes", target, integer=True)
            if min(notes) < 0 or max(notes) > 127:
                raise ConfigError(f"melody notes are MIDI note numbers 0-127, got {min(notes)}..{max(notes)}")
            self.notes = torch.tensor(notes) % 12  # [K] pitch classes, spread evenly over the clip
            self.ref_classes = self.ref_voiced = None

    def _target_from_wave(self, wave: torch.Tensor) -> None:
        wave = wave.float().reshape(1, -1)  # [1, T]
        _check_clip(self.name, wave, self.sample_rate, self.n_fft)
        with torch.no_grad():
            chroma = self.chroma_energy(wave)[0]  # [12, F]
            padded = F.pad(wave[:, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")[0, 0]
            energy = padded.unfold(-1, self.n_fft, self.hop).pow(2).mean(-1)[: chroma.shape[-1]]  # [F]
        voiced = (energy > energy.max() * 1e-4) & (chroma.sum(0) > POWER_FLOOR)  # within 40 dB of the loudest
        if not bool(voiced.any()):
            raise InputError("the melody reference is silent (no frame within 40 dB of full scale has pitch)")
        self.ref_classes, self.ref_voiced = chroma.argmax(0), voiced  # [F_ref], [F_ref]
        self.ref_samples, self.notes = wave.shape[-1], None

    def chroma_energy(self, wave: torch.Tensor) -> torch.Tensor:
        """Pitch-class energy of [N, T] waveforms -> [N, 12, frames]."""
        power = power_spectrogram(wave, self.chroma_fft, self.hop)  # [N, bins, frames]
        return torch.einsum("cb,nbf->ncf", self.chroma_fb.to(power), power)

    def chroma(self, wave: torch.Tensor) -> torch.Tensor:
        """Soft chroma (log-probabilities over the 12 pitch classes) of [N, T] waveforms -> [N, 12, frames]."""
        return torch.log(self.chroma_energy(wave) + POWER_FLOOR).log_softmax(1)

    def targets(self, samples: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The target pitch class of each of a clip's frames and whether it counts -> ([frames], [frames])."""
        times = _frame_times(frames, self.hop, samples)  # [F]
        if self.notes is not None:
            index = (times * len(self.notes)).long()  # note k covers [k / K, (k + 1) / K) of the clip
            return self.notes[index], torch.ones(frames, dtype=torch.bool)
        # the reference frame at the same fraction of the reference (its frame centres are k * hop samples)
        index = (times * self.ref_samples / self.hop).round().long().clamp(max=len(self.ref_classes) - 1)
        return self.ref_classes[index], self.ref_voiced[index]

    def loss(self, wave: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        _check_clip(self.name, wave, self.sample_rate, self.n_fft)
        log_chroma = self.chroma(wave)  # [N, 12, F]
        classes, voiced = self.targets(wave.shape[-1], log_chroma.shape[-1])  # [F], [F]
        picked = log_chroma.gather(1, classes.to(wave.device).expand(len(wave), 1, -1))[:, 0]  # [N, F]
        voiced = voiced.to(picked)
        return -(picked * voiced).sum(-1) / voiced.sum().clamp(min=1)


class Structure(_MelControl):
    """Musical form: which sections repeat (DITTO's structure control, Novack et al. 2024).

    Feature: per frame, the log-compressed mel power ``log(1 + mel / 1e-5)`` (64 bands, ``feature="mel"``)
    or the energy chroma of `Melody` (``"chroma"``), L2-normalised. The clip is cut into len(form) equal
    sections; the section self-similarity S[i, j] is the mean cosine similarity of frame t of section i
    and frame t of section j (the frame self-similarity matrix averaged along each block's diagonal, so a
    repeat must match frame for frame while a section may vary within itself). Target: 1 where two
    sections share a letter of `form` (case-insensitive), 0 elsewhere.
    Loss: mean squared error of S and the target over the section pairs i < j.
    """

    name = "structure"

    def __init__(self, form: str, sample_rate: int, *, feature: str = "mel"):
        super().__init__(sample_rate)
        if not isinstance(form, str) or not form.isalpha() or not form.isascii():
            raise ConfigError(f"structure form must be letters A-Z, one per section (e.g. AABA), got {form!r}")
        if len(form) < 2:
            raise ConfigError(f"structure form needs at least 2 sections to compare, got {form!r}")
        if feature not in ("mel", "chroma"):
            raise ConfigError(f"structure feature must be 'mel' or 'chroma', got {feature!r}")
        self.form, self.feature = form.upper(), feature
        self.target = torch.tensor([[float(a == b) for b in self.form] for a in self.form])  # [L, L]
        self.pairs = torch.triu_indices(len(form), len(form), offset=1)  # [2, pairs], i < j
        # chroma as in Melody's defaults: window 2 x frame_size, 110-4200 Hz
        self.chroma_fb = chroma_filterbank(2 * self.n_fft, self.sample_rate, 110.0, 4200.0)  # [12, bins]

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """L2-normalised frame features of [N, T] waveforms -> [N, frames, D]."""
        if self.feature == "chroma":
            power = power_spectrogram(wave, 2 * self.n_fft, self.hop)  # [N, bins, F]
            feats = torch.einsum("cb,nbf->ncf", self.chroma_fb.to(power), power)  # [N, 12, F]
        else:
            power = power_spectrogram(wave, self.n_fft, self.hop)  # [N, bins, F]
            feats = torch.log1p(torch.einsum("bm,nbf->nmf", self.mel_fb.to(power), power) / LOG_MEL_FLOOR)
        return F.normalize(feats.transpose(1, 2), dim=-1, eps=1e-8)  # [N, F, D]

    def section_similarity(self, wave: torch.Tensor) -> torch.Tensor:
        """Section self-similarity of [N, T] waveforms -> [N, L, L]."""
        _check_clip(self.name, wave, self.sample_rate, self.n_fft)
        feats = self.features(wave)  # [N, F, D]
        sections = len(self.form)
        per_section = feats.shape[1] // sections
        if per_section < 1:
            raise ConfigError(f"structure form {self.form!r} has {sections} sections but the clip "
                              f"({wave.shape[-1] / self.sample_rate:.2f} s) has only {feats.shape[1]} frames")
        feats = feats[:, : per_section * sections].reshape(len(wave), sections, per_section, -1)  # [N, L, Fs, D]
        return torch.einsum("nitd,njtd->nij", feats, feats) / per_section  # [N, L, L]

    def loss(self, wave: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        sim = self.section_similarity(wave)  # [N, L, L]
        i, j = self.pairs.to(sim.device)
        return (sim[:, i, j] - self.target.to(sim)[i, j]).pow(2).mean(-1)


class Inpaint(_MelControl):
    """Regenerate a region of a reference clip, keep the rest (DITTO's inpainting, Novack et al. 2024).

    Loss: log-mel L1 (`_MelControl.log_mel`: 64 Slaney mel bands, frames of `frame_size`, hop a quarter)
    between the output and `reference_wave`, averaged over the bands and the frames whose window lies
    wholly outside [start_s, end_s) (frames touching the region are free). The clip must be as long as
    the reference; that, and the region lying inside the clip, are checked when a clip is scored.
    """

    name = "inpaint"

    def __init__(self, reference_wave: torch.Tensor, start_s: float, end_s: float, sample_rate: int):
        super().__init__(sample_rate)
        self.reference = _reference(reference_wave, self.name)  # [T_ref]
        self.start_s = check_number("inpaint start", start_s, minimum=0.0, what="seconds")
        self.end_s = check_number("inpaint end", end_s, minimum=0.0, what="seconds")
        if self.start_s >= self.end_s:
            raise ConfigError(f"inpaint region must have start < end, got {start_s}-{end_s} s")
        self._check_region(len(self.reference), "reference")
        _check_clip(self.name, self.reference, self.sample_rate, self.n_fft)
        self._ref_mel = self.log_mel(self.reference[None])[0]  # [mels, F]

    def _check_region(self, samples: int, what: str) -> None:
        if self.end_s * self.sample_rate > samples:
            raise ConfigError(f"inpaint region {self.start_s}-{self.end_s} s ends beyond the {what} "
                              f"({samples / self.sample_rate:.3f} s)")

    def kept_frames(self, frames: int) -> torch.Tensor:
        """Which frames lie wholly outside the region -> [frames] bool."""
        centre = torch.arange(frames) * self.hop
        start, end = self.start_s * self.sample_rate, self.end_s * self.sample_rate
        return (centre + self.n_fft // 2 <= start) | (centre - self.n_fft // 2 >= end)

    def loss(self, wave: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        self._check_region(wave.shape[-1], "clip")
        if wave.shape[-1] != len(self.reference):
            raise InputError(f"inpaint compares clips as long as its reference ({len(self.reference)} samples, "
                             f"{len(self.reference) / self.sample_rate:.3f} s), got {wave.shape[-1]} samples")
        mel = self.log_mel(wave)  # [N, mels, F]
        kept = self.kept_frames(mel.shape[-1]).nonzero()[:, 0]  # [F_kept], on the CPU: no device sync
        if kept.numel() == 0:
            raise ConfigError(f"inpaint region {self.start_s}-{self.end_s} s leaves no frame of the clip to keep")
        kept = kept.to(mel.device)
        return (mel - self._ref_mel.to(mel)).index_select(-1, kept).abs().mean((1, 2))


class Outpaint(_MelControl):
    """Continue a reference clip past `keep_until_s` (DITTO's outpainting, Novack et al. 2024).

    Loss: log-mel L1 (64 Slaney mel bands, frames of `frame_size`, hop a quarter) between the output's
    first `keep_until_s` seconds and the reference's, averaged over bands and frames; the rest of the
    clip is free. The reference must last at least `keep_until_s`; the clip too (checked when scored).
    """

    name = "outpaint"

    def __init__(self, reference_wave: torch.Tensor, keep_until_s: float, sample_rate: int):
        super().__init__(sample_rate)
        reference = _reference(reference_wave, self.name)  # [T_ref]
        self.keep_until_s = check_number("outpaint keep_until", keep_until_s, minimum=0.0, open_min=True,
                                         what="seconds of the reference to keep")
        self.keep = round(self.keep_until_s * self.sample_rate)
        if self.keep > len(reference):
            raise ConfigError(f"outpaint keeps {keep_until_s} s but the reference lasts "
                              f"{len(reference) / self.sample_rate:.3f} s")
        if self.keep < self.n_fft:
            raise ConfigError(f"outpaint keep_until {keep_until_s} s is shorter than one analysis frame "
                              f"({self.n_fft / self.sample_rate:.3f} s)")
        self._ref_mel = self.log_mel(reference[None, : self.keep])[0]  # [mels, F]

    def loss(self, wave: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        if wave.shape[-1] < self.keep:
            raise ConfigError(f"outpaint keeps {self.keep_until_s} s of the reference but the clip lasts only "
                              f"{wave.shape[-1] / self.sample_rate:.3f} s")
        mel = self.log_mel(wave[:, : self.keep])  # [N, mels, F]
        return (mel - self._ref_mel.to(mel)).abs().mean((1, 2))


class Loop(_MelControl):
    """A seamless loop: the clip's last `overlap_s` seconds sound like its first (DITTO's looping, Novack et al.
    2024).

    Loss: log-mel L1 (64 Slaney mel bands, frames of `frame_size`, hop a quarter) between the first and
    the last `overlap_s` seconds of the clip, averaged over bands and frames; gradients reach both ends.
    The overlap must be positive, at least one frame, and at most half the clip (checked when scored).
    """

    name = "loop"

    def __init__(self, overlap_s: float, sample_rate: int):
        super().__init__(sample_rate)
        self.overlap_s = check_number("loop overlap", overlap_s, minimum=0.0, open_min=True, what="seconds")
        self.overlap = round(self.overlap_s * self.sample_rate)
        if self.overlap < self.n_fft:
            raise ConfigError(f"loop overlap {overlap_s} s is shorter than one analysis frame "
                              f"({self.n_fft / self.sample_rate:.3f} s)")

    def loss(self, wave: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        if 2 * self.overlap > wave.shape[-1]:
            raise ConfigError(f"loop overlap {self.overlap_s} s is longer than half the clip "
                              f"({wave.shape[-1] / self.sample_rate:.3f} s)")
        start = self.log_mel(wave[:, : self.overlap])  # [N, mels, F]
        end = self.log_mel(wave[:, -self.overlap:])  # [N, mels, F]
        return (start - end).abs().mean((1, 2))


class TextAdherence(Control):
    """CLAP similarity of the audio and a text (the text-adherence term used alongside DITTO's controls,
    Novack et al. 2024; CLAP: Wu et al. 2023, "Large-scale Contrastive Language-Audio Pretraining").

    Score: cosine similarity of CLAP's audio and text embeddings (loss = its negative). `text` is fixed,
    or None to use each call's prompt. Needs an unfused CLAP (``enable_fusion=False``, e.g.
    clap-htsat-unfused) from a local folder. The audio path mirrors ClapFeatureExtractor in torch so that
    `score_tensor` is differentiable: resample to its ``sampling_rate``, keep the first ``max_length_s``
    seconds (the extractor would crop at random), repeat-pad / pad shorter clips per its ``padding``, log
    power mel (``fft_window_size``, ``hop_length``, ``feature_size`` Slaney bands from ``frequency_min`` to
    ``frequency_max``, ``10 log10(max(mel, 1e-10))``) — its ``rand_trunc`` path, fusion off. `score` runs
    the feature extractor itself on the same cropped clips.
    """

    name = "text"

    def __init__(self, clap, processor=None, *, sample_rate: int, text: str | None = None):
        super().__init__(sample_rate)
        if isinstance(clap, (str, Path)):
            clap, processor = load_clap(clap)
        if processor is None:
            raise ConfigError("TextAdherence needs the ClapProcessor that goes with its ClapModel")
        audio_config = clap.config.audio_config
        if audio_config.enable_fusion:
            raise ConfigError("TextAdherence needs an unfused CLAP (enable_fusion=False, e.g. clap-htsat-unfused): "
                              "a fused model's input holds random crops, which no gradient can follow")
        extractor = processor.feature_extractor
        if extractor.feature_size != audio_config.num_mel_bins:
            raise ConfigError(f"the CLAP feature extractor makes {extractor.feature_size} mel bands but the model "
                              f"takes {audio_config.num_mel_bins}")
        if text is not None and not str(text).strip():
            raise ConfigError("the text control needs a text to compare the audio with, got an empty one")
        # frozen: noise optimisation differentiates through CLAP, never into it
        self.model, self.processor, self.extractor = clap.eval().requires_grad_(False), processor, extractor
        self.text = None if text is None else str(text).strip()
        self.clap_rate = int(extractor.sampling_rate)
        self.max_samples = int(extractor.nb_max_samples)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.clap_rate, n_fft=extractor.fft_window_size, hop_length=extractor.hop_length,
            f_min=float(extractor.frequency_min), f_max=float(extractor.frequency_max),
            n_mels=extractor.feature_size, power=2.0, norm="slaney", mel_scale="slaney")
        self._text_embeds: dict[str, torch.Tensor] = {}

    def _prompt_text(self, prompt: Any) -> str:
        text = self.text if self.text is not None else ("" if prompt is None else str(prompt).strip())
        if not text:
            raise InputError("the text control compares audio with a text: give it one (text=WORDS) or a prompt")
        return text

    def text_embedding(self, text: str) -> torch.Tensor:
        """CLAP's unit text embedding of `text` -> [D] (cached)."""
        if text not in self._text_embeds:
            ids = self.processor.tokenizer([text], padding=True, return_tensors="pt").to(self.model.device)
            with torch.no_grad():
                embeds = _pooled(self.model.get_text_features(**ids))
            self._text_embeds[text] = F.normalize(embeds.float(), dim=-1)[0]
        return self._text_embeds[text]

    def _clap_clips(self, wave: torch.Tensor) -> torch.Tensor:
        """[N, T] at the control's rate -> [N, T'] at CLAP's rate, cropped to its maximum length."""
        if self.sample_rate != self.clap_rate:
            wave = torchaudio.functional.resample(wave, self.sample_rate, self.clap_rate)
        return wave[:, : self.max_samples]

    def input_features(self, wave: torch.Tensor) -> torch.Tensor:
        """ClapFeatureExtractor's log-mel input of [N, T] waveforms at the control's rate, in torch
        -> [N, 1, frames, mels], differentiable."""
        wave = self._clap_clips(wave)  # [N, T']
        samples, padding = wave.shape[-1], self.extractor.padding
        if samples < self.max_samples:
            if padding == "repeat":
                wave = wave.repeat(1, self.max_samples // samples + 1)[:, : self.max_samples]
            elif padding == "repeatpad":
                wave = wave.repeat(1, self.max_samples // samples)
            wave = F.pad(wave, (0, self.max_samples - wave.shape[-1]))  # [N, max_samples]
        mel = self.mel.to(wave.device)(wave)  # [N, mels, frames]
        return (10 * torch.log10(mel.clamp(min=1e-10))).transpose(1, 2)[:, None]

    def _similarity(self, features: torch.Tensor, prompt: Any) -> torch.Tensor:
        text = self.text_embedding(self._prompt_text(prompt))  # [D]
        audio = _pooled(self.model.get_audio_features(input_features=features.to(self.model.device)))  # [N, D]
        return F.normalize(audio.float(), dim=-1) @ text.to(audio.device)  # [N]

    def loss(self, wave: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        return -self._similarity(self.input_features(wave), prompt)

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        """CLAP cosine similarity of `Audio` outputs (resampled to CLAP's rate) and the text -> [N], through
        ClapFeatureExtractor itself (``rand_trunc``, clips cropped to their first ``max_length_s`` seconds)."""
        waves = audio_waves(outputs, self.sample_rate, self.name)
        if not waves:
            return torch.zeros(0)
        with torch.no_grad():
            clips = [self._clap_clips(w[None])[0].double().numpy() for w in waves]
            features = self.extractor(clips, sampling_rate=self.clap_rate, truncation="rand_trunc",
                                      return_tensors="pt")["input_features"]  # [N, 1, frames, mels]
            return self._similarity(features.float(), prompt)


def _pooled(output) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the projected embedding
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clap(folder: str | Path):
    """A ClapModel and ClapProcessor from a local folder (safetensors, no hub), or a zoo name such as
    ``zoo:tones-clap`` -> (model, processor)."""
    from transformers import ClapModel, ClapProcessor

    if isinstance(folder, str) and folder.startswith("zoo:"):
        from ponder.errors import ZooError
        from ponder.modalities.registry import zoo_entries

        table = zoo_entries()
        entry = table.get(folder.removeprefix("zoo:"))
        if entry is None or "clap" not in entry.name:
            claps = ", ".join(f"zoo:{n}" for n in sorted(table) if "clap" in n) or "none"
            raise ZooError(f"{folder!r} is not a zoo CLAP; the zoo's CLAP models: {claps}")
        folder = entry.weights()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{str(folder)!r} is not a ClapModel folder (no config.json)")
    try:
        model = ClapModel.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=torch.float32)
        processor = ClapProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"cannot load a ClapModel and ClapProcessor from {str(folder)!r}: {err}") from None
    return model, processor


class Weighted:
    """A weighted sum of controls (DITTO, Novack et al. 2024, optimises such sums of feature losses).

    score = sum_i w_i * score_i, for `score` and `score_tensor` alike (each part resamples `Audio` outputs
    to its own rate); its name joins the parts' (``"2*melody+intensity"``).
    """

    def __init__(self, controls: Sequence[Any], weights: Sequence[float] | None = None):
        controls = list(controls)
        if not controls:
            raise ConfigError("a weighted control needs at least one control")
        weights = [1.0] * len(controls) if weights is None else list(weights)
        if len(weights) != len(controls):
            raise ConfigError(f"a weighted control needs one weight per control: {len(controls)} controls, "
                              f"{len(weights)} weights")
        self.controls = controls
        self.weights = [check_number(f"weight of {c.name}", w, minimum=0.0, open_min=True)
                        for c, w in zip(controls, weights)]
        self.name = "+".join(c.name if w == 1 else f"{w:g}*{c.name}" for c, w in zip(controls, self.weights))

    def score_tensor(self, prompt: Any, x: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the parts' `score_tensor` of waveforms [N, T] or [N, C, T] -> [N], differentiable."""
        return sum(w * c.score_tensor(prompt, x) for c, w in zip(self.controls, self.weights))

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        """Weighted sum of the parts' `score` of `Audio` outputs -> [N]."""
        return sum(w * c.score(prompt, outputs) for c, w in zip(self.controls, self.weights))

    def __repr__(self) -> str:
        return f"Weighted({self.name!r})"


# ---- the NAME=VALUE form -----------------------------------------------------------------------------------


def _numbers(what: str, values: Any, *, integer: bool = False) -> list:
    """A non-empty list of numbers (integers if `integer`), else a ConfigError naming `what`."""
    kind = "integers" if integer else "numbers"
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{what} must be a list of {kind}, got {type(values).__name__}")
    if not values:
        raise ConfigError(f"{what} must be a non-empty list of {kind}, got []")
    for value in values:
        allowed = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed) or not math.isfinite(value):
            raise ConfigError(f"{what} must be a list of {kind}, got {value!r} among them")
    return [int(v) if integer else float(v) for v in values]


def _json_list(what: str, value: str) -> list:
    """A JSON list, inline (``[1, 2]``) or from a file, else a ConfigError / InputError naming it."""
    if value.lstrip().startswith("["):
        text, source = value, "inline"
    else:
        path = Path(value)
        if not path.is_file():
            raise InputError(f"{what} file {value!r} is not a file (give a JSON list file or an inline [..] list)")
        try:
            text, source = path.read_text(), f"file {value!r}"
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"{what} file {value!r} cannot be read: {err}") from None
    if not text.strip():
        raise InputError(f"{what} {source} is empty (expected a JSON list)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} {source} is not JSON (expected a list): {err}") from None


def _seconds(what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number of seconds, got {text!r}") from None
    return check_number(what, value, minimum=0.0, what="seconds")


def _reference(wave: Any, control: str) -> torch.Tensor:
    wave = torch.as_tensor(wave).float()
    if wave.dim() == 2:
        wave = wave.mean(0)
    if wave.dim() != 1 or wave.numel() == 0:
        raise InputError(f"the {control} reference must be a non-empty waveform [T] or [C, T], "
                         f"got shape {tuple(wave.shape)}")
    return wave


def _split_at(control: str, value: str, example: str) -> tuple[str, str]:
    path, at, times = value.rpartition("@")
    if not at or not path or not times:
        raise ConfigError(f"{control} takes REFERENCE@TIMES, e.g. {control}={example}, got {value!r}")
    return path, times


def parse_control(spec: str, sample_rate: int, *, clap: Any = None) -> Control:
    """A control from its ``NAME=VALUE`` form (the CLI's and Python's):

    ``intensity=curve.json`` (a JSON list of dBFS values, or inline ``intensity=[-30,-10,-20]``),
    ``melody=ref.wav`` or ``melody=notes.json`` (MIDI notes; inline ``melody=[60,62,64]`` too),
    ``structure=AABA``, ``inpaint=ref.wav@1.0-2.5`` (regenerate 1.0-2.5 s), ``outpaint=ref.wav@2.0``
    (keep the first 2.0 s), ``loop=0.5`` (overlap seconds), ``text=some words`` (needs `clap`: a local
    ClapModel folder, or a (ClapModel, ClapProcessor) pair). A ConfigError / InputError names a bad value.
    """
    if not isinstance(spec, str) or "=" not in spec:
        raise ConfigError(f"a control is NAME=VALUE with NAME one of {', '.join(CONTROL_NAMES)}, got {spec!r}")
    name, _, value = spec.partition("=")
    name, value = name.strip().lower(), value.strip()
    if name not in CONTROL_NAMES:
        raise ConfigError(f"unknown control {name!r}; known: {', '.join(CONTROL_NAMES)}")
    if not value:
        raise ConfigError(f"control {name!r} needs a value: {name}=VALUE")
    if name == "intensity":
        return Intensity(_numbers("intensity target", _json_list("intensity target", value)), sample_rate)
    if name == "melody":
        if value.lstrip().startswith("[") or value.lower().endswith(".json"):
            return Melody(_numbers("melody notes", _json_list("melody notes", value), integer=True), sample_rate)
        return Melody(read_audio(value, sample_rate, what="melody reference"), sample_rate)
    if name == "structure":
        return Structure(value, sample_rate)
    if name == "inpaint":
        path, times = _split_at(name, value, "ref.wav@1.0-2.5")
        start, dash, end = times.partition("-")
        if not dash:
            raise ConfigError(f"inpaint takes REFERENCE@START-END seconds, e.g. inpaint=ref.wav@1.0-2.5, got {value!r}")
        start, end = _seconds("inpaint start", start), _seconds("inpaint end", end)
        return Inpaint(read_audio(path, sample_rate, what="inpaint reference"), start, end, sample_rate)
    if name == "outpaint":
        path, times = _split_at(name, value, "ref.wav@2.0")
        keep = _seconds("outpaint keep_until", times)
        return Outpaint(read_audio(path, sample_rate, what="outpaint reference"), keep, sample_rate)
    if name == "loop":
        return Loop(_seconds("loop overlap", value), sample_rate)
    if clap is None:
        raise ConfigError("the text control needs a CLAP: a local ClapModel folder (with its processor files) or "
                          "a zoo CLAP, e.g. --clap zoo:tones-clap (Python: clap=...)")
    if isinstance(clap, (tuple, list)):
        return TextAdherence(*clap, sample_rate=sample_rate, text=value)
    return TextAdherence(clap, sample_rate=sample_rate, text=value)


def parse_controls(specs: Sequence[str], weights: dict[str, float] | None, sample_rate: int, clap: Any = None
                   ) -> Weighted:
    """A `Weighted` control from ``NAME=VALUE`` specs (`parse_control`); `weights` maps control names to
    weights (default 1; a name no spec uses is a ConfigError). A CLAP folder is loaded once for all."""
    specs = list(specs)
    if not specs:
        raise ConfigError(f"give at least one control NAME=VALUE (names: {', '.join(CONTROL_NAMES)})")
    if isinstance(clap, (str, Path)) and any(str(s).partition("=")[0].strip().lower() == "text" for s in specs):
        clap = load_clap(clap)
    controls = [parse_control(spec, sample_rate, clap=clap) for spec in specs]
    weights = dict(weights or {})
    unused = sorted(set(weights) - {c.name for c in controls})
    if unused:
        raise ConfigError(f"weights name controls not given: {', '.join(unused)}; given: "
                          f"{', '.join(c.name for c in controls)}")
    return Weighted(controls, [weights.get(c.name, 1.0) for c in controls])
