"""The ``tones`` zoo task: seeded procedural music clips whose every musical fact is known.

A clip is a short monophonic melody (4 s at 16 kHz by default) drawn from one seed:

- **Form.** The clip is cut into equal sections, one per letter of a form such as ``AABA``; sections
  with the same letter play the same phrase (same rhythm, same pitches, same samples), so a structure
  control has exact section boundaries and an exact self-similarity target.
- **Tempo.** A tempo drawn from ``[min_bpm, max_bpm]`` is snapped so that a section holds a whole
  number of sixteenth notes; the rhythm grid then runs unbroken across section boundaries and the
  reported BPM is exact. Faster tempos carry more notes per phrase, so the tempo word is audible as
  the note rate and not only as the grid.
- **Melody.** A key (one of 12 roots) and a scale (major, minor, pentatonics, modes); pitches are a
  random walk over the scale's tones within ``melody_span`` semitones of a centre pitch, so the
  register (from the mean pitch: low / mid / high) is well defined. Each note sounds for an
  articulation fraction of its grid slot; the rest of the slot is silence.
- **Timbre.** ``additive`` (a few harmonics, fundamental strongest), ``saw`` and ``square``
  (band-limited: no partial above ``max_harmonic_hz``, so nothing aliases), each through a
  one-period wavetable at unit RMS; and ``pluck`` (Karplus–Strong: a noise burst through a delay line
  with a two-tap lowpass and a fractional-delay tap, tuned to the exact pitch). Every note has an
  ADSR envelope that ends inside the note, so no note's tail reaches into the next.
- **Intensity.** A smooth random automation curve in dB (a sum of a few slow cosines, scaled to a
  random depth) multiplies the whole clip; then the clip is peak-normalised to ``-headroom_db`` dBFS.
  ``intensity_db`` is that curve after normalisation, at ``frame_rate`` frames per second: the RMS
  level in dBFS that a note at full envelope has at that frame (oscillators are at unit RMS).

Ground truth on each `Clip`: ``notes`` (onset s, duration s, MIDI), ``key``, ``scale``, ``tempo``
(BPM), ``tempo_word``, ``timbre``, ``register``, ``form``, ``intensity_db``, ``seed`` and ``split``;
`melody_midi`, `chroma_target` and `intensity_curve` resample it to any frame count, and
`Clip.tags` is the prompt a model is conditioned on (``"pluck, high, fast"``, words of `TAG_VOCAB`).

Splits: a seed is held out when the SHA-256 of ``f"tones-{seed}"`` falls in the held-out bucket
(1 in 10); the split is a pure function of the seed, so the held-out set never moves, and `clips`
walks seeds upwards from ``start`` keeping only one split's.

Everything is numpy and deterministic in the seed (one ``numpy.random.Generator`` per clip): same
seed and config, same bytes. The generator is the data set.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ponder.errors import ConfigError, check_int, check_number

KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")  # index = pitch class of the root
SCALES = {  # semitones above the root
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),  # natural minor
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
TIMBRES = ("additive", "saw", "square", "pluck")
REGISTERS = ("low", "mid", "high")
TEMPO_WORDS = ("slow", "medium", "fast")
FORMS = ("AABA", "ABAB", "AAAA", "ABAC", "AABB")
TAG_VOCAB = TIMBRES + REGISTERS + TEMPO_WORDS  # every word a `Clip.tags` prompt can contain
SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 10  # 1 in HELDOUT_BUCKETS seeds is held out
STEPS_PER_BEAT = 4  # the rhythm grid is sixteenth notes
_TABLE_SIZE = 2048  # samples in one wavetable period; linear interpolation error < 1e-4 at 20 partials
_CONTROL_RATE = 1000.0  # Hz at which the intensity automation is evaluated before interpolation


@dataclass(frozen=True)
class Envelope:
    """An ADSR envelope, peak level 1.0; it is fitted inside each note (scaled down if the note is short)."""

    attack_s: float  # rise from 0 to 1
    decay_s: float  # fall from 1 to `sustain`
    sustain: float  # level held until the release, in [0, 1]
    release_s: float  # fall from `sustain` to 0, ending exactly at the note's end


DEFAULT_ENVELOPES = {
    "additive": Envelope(0.02, 0.08, 0.8, 0.05),  # soft organ-like onset
    "saw": Envelope(0.01, 0.10, 0.6, 0.04),  # brassy: bright attack that settles
    "square": Envelope(0.01, 0.06, 0.7, 0.04),  # reed-like
    "pluck": Envelope(0.002, 0.0, 1.0, 0.02),  # the string decays by itself; only de-click both ends
}


@dataclass
class ToneConfig:
    """Knobs of the generator (the recipe in the zoo card records them); validated on construction."""

    sample_rate: int = 16000  # the zoo's audio rate: 8 kHz of bandwidth holds every partial we keep
    seconds: float = 4.0  # room for a 4-section form at 1 s per section; short enough for a tiny model
    min_notes: int = 8  # fewest notes per clip: 2 per section of a 4-letter form
    max_notes: int = 16  # most notes per clip: 4 per section keeps every note >= 1 sixteenth long
    min_bpm: float = 70.0  # slowest tempo drawn; snapped to whole sixteenths per section (75 at 1 s)
    max_bpm: float = 160.0  # fastest; snapped to 150 at 1 s sections -> tempos 75, 90, ..., 150
    slow_below_bpm: float = 100.0  # tempo word "slow" below this: splits the snapped tempos 2 / 2 / 2
    fast_from_bpm: float = 130.0  # tempo word "fast" from this up
    min_midi: int = 48  # C3: lowest melody pitch; the shortest note (60 ms) still holds 8 periods
    max_midi: int = 84  # C6: highest; the pluck's delay line still holds 14 samples per period
    melody_span: int = 6  # a melody stays within +-6 semitones of its centre, so its register is clear
    low_below_midi: float = 60.0  # register "low" when the mean pitch is below C4
    high_from_midi: float = 72.0  # register "high" from C5 up; centres drawn in [54, 78] give ~1/4, 1/2, 1/4
    keys: tuple[str, ...] = KEYS  # all 12 roots
    scales: tuple[str, ...] = tuple(SCALES)  # all scales of SCALES
    timbres: tuple[str, ...] = TIMBRES  # all four instruments
    forms: tuple[str, ...] = FORMS  # bar-level repetition forms; letters are sections
    articulation: tuple[float, float] = (0.6, 0.95)  # sounding fraction of a note's slot (per clip): audible gaps
    additive_harmonics: tuple[float, ...] = (1.0, 0.5, 0.3, 0.15)  # fundamental strongest: FFT peak is the pitch
    max_harmonics: int = 20  # saw / square partials at most: enough edge, no fizz
    max_harmonic_hz: float = 7000.0  # no partial above this (Nyquist is 8 kHz): band-limited, nothing aliases
    pluck_t60_s: float = 1.2  # Karplus-Strong decay time to -60 dB: a guitar-like string
    envelopes: dict[str, Envelope] = field(default_factory=lambda: dict(DEFAULT_ENVELOPES))  # one per timbre
    min_intensity_depth_db: float = 6.0  # the automation swings at least this much: clearly audible
    max_intensity_depth_db: float = 18.0  # at most this much: quiet passages stay far above 16-bit noise
    intensity_cycles: int = 3  # fastest automation component, cycles per clip: a curve, not a tremolo
    frame_rate: float = 50.0  # frames per second of intensity_db (20 ms frames)
    headroom_db: float = 1.0  # the clip's peak is normalised to -1 dBFS

    def __post_init__(self):
        check_int("sample_rate", self.sample_rate, minimum=1000)
        check_number("seconds", self.seconds, minimum=0.0, open_min=True)
        check_int("min_notes", self.min_notes)
        check_int("max_notes", self.max_notes, minimum=self.min_notes)
        check_number("min_bpm", self.min_bpm, minimum=0.0, open_min=True)
        check_number("max_bpm", self.max_bpm, minimum=self.min_bpm)
        check_number("slow_below_bpm", self.slow_below_bpm)
        check_number("fast_from_bpm", self.fast_from_bpm, minimum=self.slow_below_bpm)
        check_int("min_midi", self.min_midi, minimum=0)
        check_int("melody_span", self.melody_span, minimum=1)
        check_int("max_midi", self.max_midi, minimum=self.min_midi + 2 * self.melody_span,
                  what="at least min_midi + 2 * melody_span")
        check_number("low_below_midi", self.low_below_midi)
        check_number("high_from_midi", self.high_from_midi, minimum=self.low_below_midi)
        check_number("max_harmonic_hz", self.max_harmonic_hz, minimum=midi_to_hz(self.max_midi),
                     maximum=self.sample_rate / 2, open_max=True,
                     what="above the top pitch's fundamental and below Nyquist")
        check_int("max_harmonics", self.max_harmonics)
        check_number("pluck_t60_s", self.pluck_t60_s, minimum=0.0, open_min=True)
        check_number("min_intensity_depth_db", self.min_intensity_depth_db, minimum=0.0)
        check_number("max_intensity_depth_db", self.max_intensity_depth_db, minimum=self.min_intensity_depth_db)
        check_int("intensity_cycles", self.intensity_cycles)
        check_number("frame_rate", self.frame_rate, minimum=0.0, open_min=True)
        check_number("headroom_db", self.headroom_db, minimum=0.0)
        if len(self.articulation) != 2 or not 0.0 < self.articulation[0] <= self.articulation[1] <= 1.0:
            raise ConfigError(f"articulation must be (low, high) with 0 < low <= high <= 1, got {self.articulation!r}")
        if not self.additive_harmonics or self.additive_harmonics[0] <= 0:
            raise ConfigError(f"additive_harmonics must start with a positive fundamental, got "
                              f"{self.additive_harmonics!r}")
        for name, chosen, allowed in (("keys", self.keys, KEYS), ("scales", self.scales, tuple(SCALES)),
                                      ("timbres", self.timbres, TIMBRES)):
            bad = [x for x in chosen if x not in allowed]
            if not chosen or bad:
                raise ConfigError(f"{name} must be a non-empty subset of {', '.join(allowed)}; got {chosen!r}")
        for timbre in self.timbres:
            env = self.envelopes.get(timbre)
            if env is None:
                raise ConfigError(f"envelopes has no entry for timbre {timbre!r}")
            if min(env.attack_s, env.decay_s, env.release_s) < 0 or not 0.0 <= env.sustain <= 1.0:
                raise ConfigError(f"envelope of {timbre!r} needs non-negative times and sustain in [0, 1], got {env}")
        if not self.forms:
            raise ConfigError("forms must name at least one form, e.g. 'AABA'")
        for form in self.forms:
            if not form or not form.isalpha() or not form.isupper():
                raise ConfigError(f"form {form!r} must be upper-case letters, one per section (e.g. 'AABA')")
            grid = _grid(self, form)
            if grid.min_steps > grid.max_steps:
                raise ConfigError(f"no tempo in [{self.min_bpm}, {self.max_bpm}] BPM puts a whole number of "
                                  f"sixteenths in a {grid.section_len / self.sample_rate:.3g} s section of {form!r}")
            if grid.min_phrase_notes > grid.max_phrase_notes:
                raise ConfigError(f"form {form!r}: {len(form)} sections cannot hold between {self.min_notes} and "
                                  f"{self.max_notes} notes with at most {grid.min_steps} sixteenths per section")


@dataclass(eq=False)  # numpy fields: compare clips by their fields explicitly
class Clip:
    """One generated clip and its ground truth."""

    waveform: np.ndarray  # float32 [T], T = round(seconds * sample_rate), peak at -headroom_db dBFS
    sample_rate: int  # Hz
    notes: list[tuple[float, float, int]]  # (onset s, sounding duration s, MIDI pitch), in time order
    key: str  # root, one of KEYS
    scale: str  # one of SCALES
    tempo: float  # BPM, exact: a section is a whole number of sixteenths
    tempo_word: str  # "slow" / "medium" / "fast" by the config's BPM thresholds
    timbre: str  # one of TIMBRES
    register: str  # "low" / "mid" / "high" from the mean MIDI pitch of `notes`
    form: str  # e.g. "AABA": one letter per equal-length section
    intensity_db: np.ndarray  # float32 [F]: automation level in dBFS at frame centres (f + 0.5) / frame_rate
    frame_rate: float  # frames per second of intensity_db
    seed: int
    split: str  # "train" | "heldout", = split_of(seed)

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate

    @property
    def tags(self) -> str:
        """The conditioning prompt: instrument, register and tempo word, e.g. ``"pluck, high, fast"``."""
        return f"{self.timbre}, {self.register}, {self.tempo_word}"

    @property
    def sections(self) -> list[tuple[float, float, str]]:
        """(start s, end s, letter) of each section; samples after the last section (if any) are silent."""
        section_len = len(self.waveform) // len(self.form)  # samples, as in `generate`
        return [(k * section_len / self.sample_rate, (k + 1) * section_len / self.sample_rate, letter)
                for k, letter in enumerate(self.form)]


# ---- splits -----------------------------------------------------------------------------------------


def split_of(seed: int) -> str:
    """Which split a seed belongs to: "heldout" when sha256(f"tones-{seed}") falls in bucket 0 of 10."""
    digest = hashlib.sha256(f"tones-{seed}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_BUCKETS == 0 else "train"


def seeds(split: str, count: int, start: int = 0) -> list[int]:
    """The first `count` seeds >= `start` that belong to `split`, in increasing order."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    check_int("count", count, minimum=0)
    seed = check_int("start", start, minimum=0)
    out: list[int] = []
    while len(out) < count:
        if split_of(seed) == split:
            out.append(seed)
        seed += 1
    return out


def clips(split: str, count: int, start: int = 0, cfg: ToneConfig | None = None) -> Iterator[Clip]:
    """Yield the clips of the first `count` seeds >= `start` of `split`, in seed order (a fixed set)."""
    cfg = cfg or ToneConfig()
    for seed in seeds(split, count, start):
        yield generate(seed, cfg)


# ---- the generator ----------------------------------------------------------------------------------


def midi_to_hz(midi: float) -> float:
    """Equal-tempered frequency of a MIDI pitch (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


@dataclass(frozen=True)
class _Grid:
    section_len: int  # samples per section
    min_steps: int  # fewest sixteenths per section any allowed tempo gives
    max_steps: int  # most
    min_phrase_notes: int  # notes per phrase, so that a clip has min_notes..max_notes
    max_phrase_notes: int


def _grid(cfg: ToneConfig, form: str) -> _Grid:
    section_len = round(cfg.seconds * cfg.sample_rate) // len(form)
    sixteenths_per_bpm = section_len / cfg.sample_rate * STEPS_PER_BEAT / 60.0  # steps per section per BPM
    min_steps = max(1, math.ceil(cfg.min_bpm * sixteenths_per_bpm - 1e-9))
    max_steps = math.floor(cfg.max_bpm * sixteenths_per_bpm + 1e-9)
    min_notes = math.ceil(cfg.min_notes / len(form))
    max_notes = min(cfg.max_notes // len(form), min_steps)  # a note needs a sixteenth of its own
    return _Grid(section_len, min_steps, max_steps, min_notes, max_notes)


def generate(seed: int, cfg: ToneConfig | None = None) -> Clip:
    """Generate the clip of `seed` (deterministic: same seed and config, same bytes).

    seed: a non-negative integer; it seeds the clip's only random generator.
    cfg: the generator's knobs; ``ToneConfig()`` when None.
    Returns the `Clip` with its waveform and ground truth.
    """
    cfg = cfg or ToneConfig()
    check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    sr = cfg.sample_rate
    n_samples = round(cfg.seconds * sr)

    form = cfg.forms[rng.integers(len(cfg.forms))]
    grid = _grid(cfg, form)
    n_steps = int(rng.integers(grid.min_steps, grid.max_steps + 1))  # sixteenths per section
    tempo = 60.0 * n_steps * sr / (STEPS_PER_BEAT * grid.section_len)
    key = cfg.keys[rng.integers(len(cfg.keys))]
    scale = cfg.scales[rng.integers(len(cfg.scales))]
    timbre = cfg.timbres[rng.integers(len(cfg.timbres))]
    centre = rng.uniform(cfg.min_midi + cfg.melody_span, cfg.max_midi - cfg.melody_span)
    pool = _scale_pitches(KEYS.index(key), SCALES[scale], centre, cfg.melody_span)  # [P] MIDI, ascending
    articulation = rng.uniform(*cfg.articulation)

    # Notes per phrase rise with the tempo (dithered), so a fast clip also sounds busier.
    speed = (n_steps - grid.min_steps) / max(1, grid.max_steps - grid.min_steps)  # 0 slowest .. 1 fastest
    target_notes = grid.min_phrase_notes + speed * (grid.max_phrase_notes - grid.min_phrase_notes)
    phrases: dict[str, tuple[tuple[int, int, int], ...]] = {}  # letter -> ((start sample, samples, MIDI), ...)
    for letter in dict.fromkeys(form):
        for _ in range(100):  # distinct letters get distinct phrases; a repeat draw is rare
            n_notes = int(np.clip(round(target_notes + rng.uniform(-0.5, 0.5)),
                                  grid.min_phrase_notes, grid.max_phrase_notes))
            phrase = _phrase(rng, pool, centre, n_notes, n_steps, grid.section_len, articulation)
            if phrase not in phrases.values():
                break
        phrases[letter] = phrase

    # Synthesise each distinct phrase once; its sections are exact copies.
    rendered = {letter: _render_phrase(rng, phrase, timbre, grid.section_len, cfg)
                for letter, phrase in phrases.items()}
    audio = np.zeros(n_samples, dtype=np.float64)  # [T]
    notes: list[tuple[float, float, int]] = []
    for k, letter in enumerate(form):
        offset = k * grid.section_len
        audio[offset:offset + grid.section_len] = rendered[letter]
        notes += [((offset + start) / sr, length / sr, midi) for start, length, midi in phrases[letter]]

    times = np.arange(n_samples) / sr  # [T] s
    frame_times = (np.arange(round(cfg.seconds * cfg.frame_rate)) + 0.5) / cfg.frame_rate  # [F] s
    curve_db, frame_db = _automation(rng, times, frame_times, cfg)  # [T], [F] dB <= 0
    audio *= 10.0 ** (curve_db / 20.0)
    gain = 10.0 ** (-cfg.headroom_db / 20.0) / np.max(np.abs(audio))  # peak -> -headroom_db dBFS
    waveform = (audio * gain).astype(np.float32)

    mean_pitch = float(np.mean([midi for _, _, midi in notes]))
    register = ("low" if mean_pitch < cfg.low_below_midi else "high" if mean_pitch >= cfg.high_from_midi
                else "mid")
    tempo_word = "slow" if tempo < cfg.slow_below_bpm else "fast" if tempo >= cfg.fast_from_bpm else "medium"
    return Clip(waveform=waveform, sample_rate=sr, notes=notes, key=key, scale=scale, tempo=tempo,
                tempo_word=tempo_word, timbre=timbre, register=register, form=form,
                intensity_db=(frame_db + 20.0 * math.log10(gain)).astype(np.float32), frame_rate=cfg.frame_rate,
                seed=seed, split=split_of(seed))


def _scale_pitches(root: int, intervals: tuple[int, ...], centre: float, span: int) -> np.ndarray:
    """MIDI pitches of the scale within `span` semitones of `centre`, ascending."""
    low, high = math.ceil(centre - span), math.floor(centre + span)
    pitch_classes = {(root + i) % 12 for i in intervals}
    return np.array([m for m in range(low, high + 1) if m % 12 in pitch_classes])


def _phrase(rng: np.random.Generator, pool: np.ndarray, centre: float, n_notes: int, n_steps: int,
            section_len: int, articulation: float) -> tuple[tuple[int, int, int], ...]:
    """One section's notes: onsets on the sixteenth grid (the first on the downbeat), pitches a scale walk."""
    cuts = np.sort(rng.choice(np.arange(1, n_steps), size=n_notes - 1, replace=False)) if n_notes > 1 else []
    onsets = [0, *map(int, cuts)]  # steps
    ends = [*onsets[1:], n_steps]
    index = int(np.argmin(np.abs(pool - centre))) + int(rng.integers(-1, 2))  # start near the centre
    notes = []
    for j, (onset, end) in enumerate(zip(onsets, ends)):
        if j:  # mostly steps and small leaps along the scale; repeats are rare
            index += int(rng.choice((-2, -1, 0, 1, 2), p=(0.15, 0.325, 0.05, 0.325, 0.15)))
        index = min(max(index, 0), len(pool) - 1)
        start = round(onset * section_len / n_steps)
        slot = round(end * section_len / n_steps) - start  # samples
        notes.append((start, max(1, round(slot * articulation)), int(pool[index])))
    return tuple(notes)


def _render_phrase(rng: np.random.Generator, phrase, timbre: str, section_len: int, cfg: ToneConfig) -> np.ndarray:
    """The section's audio, float64 [section_len]: each note's oscillator times its ADSR envelope."""
    out = np.zeros(section_len)
    tables: dict[int, np.ndarray] = {}  # MIDI -> wavetable, shared by repeated pitches
    for start, length, midi in phrase:
        f0 = midi_to_hz(midi)
        if timbre == "pluck":
            tone = _pluck(rng, f0, length, cfg)
        else:
            if midi not in tables:
                tables[midi] = _wavetable(_partials(timbre, f0, cfg))
            phase = (f0 / cfg.sample_rate * np.arange(length)) % 1.0 * _TABLE_SIZE  # [n] table position
            tone = np.interp(phase, np.arange(_TABLE_SIZE + 1), tables[midi])
        out[start:start + length] = tone * _adsr(cfg.envelopes[timbre], length, cfg.sample_rate)
    return out


def _partials(timbre: str, f0: float, cfg: ToneConfig) -> np.ndarray:
    """Amplitudes of harmonics 1..H below max_harmonic_hz: [H]."""
    limit = max(1, int(cfg.max_harmonic_hz / f0))
    if timbre == "additive":
        return np.asarray(cfg.additive_harmonics[:limit], dtype=np.float64)
    k = np.arange(1, min(cfg.max_harmonics, limit) + 1)
    amps = 1.0 / k  # saw: all harmonics at 1/k
    if timbre == "square":
        amps[k % 2 == 0] = 0.0  # square: odd harmonics only
    return amps


def _wavetable(amps: np.ndarray) -> np.ndarray:
    """One period of sum_k amps[k] sin(2 pi (k+1) x) at unit RMS, plus the wrap-around sample: [TABLE + 1]."""
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=np.complex128)  # rfft bins of one period
    spectrum[1:len(amps) + 1] = -0.5j * _TABLE_SIZE * amps  # a sin(2 pi k x) is -i a N / 2 in bin k
    table = np.fft.irfft(spectrum, _TABLE_SIZE)  # [S], exactly band-limited
    table /= math.sqrt(np.sum(amps ** 2) / 2.0)  # RMS of a sum of sines is sqrt(sum a^2 / 2)
    return np.append(table, table[0])


def _pluck(rng: np.random.Generator, f0: float, length: int, cfg: ToneConfig) -> np.ndarray:
    """Karplus-Strong string with decay stretching (Jaffe & Smith 1983): [length] float64.

    The string runs at its own rate ``rate = f0 (L + S)``, where the loop is exactly L + S samples:
    y[n] = g ((1 - S) y[n-L] + S y[n-L-1]), a one-zero lowpass of delay S. S is the classic average
    (0.5) unless that would kill the fundamental before ``pluck_t60_s`` (high notes); then S shrinks
    until the fundamental rings exactly that long, and g in (0, 1] supplies any remaining decay. Upper
    partials die faster, as on a string. The result is resampled to the clip's rate, so the pitch is
    exact rather than rounded to a whole period. Both taps reach at least L samples back, so each block
    of L samples depends only on earlier blocks and is one numpy op.
    """
    sr = cfg.sample_rate
    omega = 2.0 * np.pi * f0 / sr  # the fundamental, rad per sample (the string's rate is within 1/L of sr)
    per_period = 10.0 ** (-3.0 / (f0 * cfg.pluck_t60_s))  # fundamental's gain per period: -60 dB in t60
    need = (1.0 - per_period ** 2) / (2.0 * (1.0 - math.cos(omega)))  # S (1 - S) giving that loss alone
    stretch = 0.5 if need >= 0.25 else (1.0 - math.sqrt(1.0 - 4.0 * need)) / 2.0  # S
    lowpass = math.sqrt(1.0 - 2.0 * stretch * (1.0 - stretch) * (1.0 - math.cos(omega)))  # |H(omega)|
    loop_gain = per_period / lowpass  # g <= 1
    lag = max(2, round(sr / f0 - stretch))  # L
    rate = f0 * (lag + stretch)  # the string's sample rate, Hz
    n_string = math.ceil((length - 1) * rate / sr) + 2  # string samples covering the note
    tap_near, tap_far = loop_gain * (1.0 - stretch), loop_gain * stretch

    burst = rng.uniform(-1.0, 1.0, lag + 1)  # [L+1], oldest first
    burst = 0.25 * np.roll(burst, 1) + 0.5 * burst + 0.25 * np.roll(burst, -1)  # a warmer (lowpassed) pluck
    # The loop passes DC (nearly) unattenuated: remove the part of the burst that feeds it. The quantity
    # the recursion conserves for g = 1 weighs the newest L samples by 1 and the oldest by S.
    dc_weights = np.ones(lag + 1)
    dc_weights[0] = stretch
    burst -= np.dot(dc_weights, burst) / dc_weights.sum()
    y = np.zeros(max(n_string, lag + 1))  # [N] at the string's rate
    y[:lag + 1] = burst / max(math.sqrt(np.mean(burst ** 2)), 1e-12)  # unit RMS
    for s in range(lag + 1, n_string, lag):
        e = min(s + lag, n_string)
        y[s:e] = tap_near * y[s - lag:e - lag] + tap_far * y[s - lag - 1:e - lag - 1]
    return np.interp(np.arange(length) * (rate / sr), np.arange(len(y)), y)


def _adsr(env: Envelope, length: int, sr: int) -> np.ndarray:
    """The envelope over a note of `length` samples: [length] in [0, 1], zero at the note's last sample."""
    attack, decay, release = (max(1.0, t * sr) for t in (env.attack_s, env.decay_s, env.release_s))  # samples
    fit = min(1.0, length / (attack + decay + release))  # short notes: shrink all three, keep the shape
    attack, decay, release = attack * fit, decay * fit, release * fit
    n = np.arange(length, dtype=np.float64)  # [n]
    rise = n / attack
    fall = 1.0 - (1.0 - env.sustain) * np.clip((n - attack) / decay, 0.0, 1.0)
    tail = env.sustain * (length - 1 - n) / release
    return np.clip(np.minimum(np.minimum(rise, fall), tail), 0.0, 1.0)


def _automation(rng: np.random.Generator, times: np.ndarray, frame_times: np.ndarray,
                cfg: ToneConfig) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random gain curve in dB, in [-depth, 0], at `times` [T] and `frame_times` [F] (s).

    Evaluated exactly at a 1 kHz control rate and at the frames; samples interpolate the control points
    linearly (the curve has at most `intensity_cycles` cycles per clip, so the error is < 0.001 dB).
    """
    k = np.arange(1, cfg.intensity_cycles + 1)  # [C] cycles per clip
    amps = rng.normal(size=len(k)) / k  # slower components swing more
    phases = rng.uniform(0.0, 2.0 * np.pi, len(k))
    depth = rng.uniform(cfg.min_intensity_depth_db, cfg.max_intensity_depth_db)

    def raw(t):  # [N] -> [N]
        return amps @ np.cos(2.0 * np.pi * np.outer(k, t) / cfg.seconds + phases[:, None])

    control_times = np.linspace(0.0, cfg.seconds, math.ceil(cfg.seconds * _CONTROL_RATE) + 1)  # [C'] s
    curve = raw(control_times)
    low, high = curve.min(), curve.max()
    scale = depth / (high - low) if high > low else 0.0
    return np.interp(times, control_times, (curve - high) * scale), (raw(frame_times) - high) * scale


# ---- ground truth for controls -------------------------------------------------------------------------


def _frame_times(clip: Clip, frames: int) -> np.ndarray:
    check_int("frames", frames)
    return (np.arange(frames) + 0.5) * clip.seconds / frames  # [frames] s, frame centres


def melody_midi(clip: Clip, frames: int) -> np.ndarray:
    """The MIDI pitch sounding at the centre of each of `frames` equal frames over the clip: int64 [frames].

    -1 where no note sounds (the gap after each note's articulation, or a silent tail).
    """
    t = _frame_times(clip, frames)
    onsets = np.array([n[0] for n in clip.notes])  # [N] s, ascending
    ends = onsets + np.array([n[1] for n in clip.notes])  # [N] s
    pitch = np.array([n[2] for n in clip.notes], dtype=np.int64)  # [N]
    index = np.searchsorted(onsets, t, side="right") - 1  # [frames] last note started at or before t
    safe = np.maximum(index, 0)
    sounding = (index >= 0) & (t < ends[safe])
    return np.where(sounding, pitch[safe], -1)


def chroma_target(clip: Clip, frames: int) -> np.ndarray:
    """One-hot pitch class of the melody at each frame: float32 [frames, 12]; all-zero rows are silence."""
    midi = melody_midi(clip, frames)  # [frames]
    chroma = np.zeros((frames, 12), dtype=np.float32)
    voiced = midi >= 0
    chroma[np.flatnonzero(voiced), midi[voiced] % 12] = 1.0
    return chroma


def intensity_curve(clip: Clip, frames: int) -> np.ndarray:
    """The automation level in dBFS at the centre of each of `frames` equal frames: float32 [frames]."""
    t = _frame_times(clip, frames)
    own = (np.arange(len(clip.intensity_db)) + 0.5) / clip.frame_rate  # [F] s
    return np.interp(t, own, clip.intensity_db).astype(np.float32)


# ---- files ---------------------------------------------------------------------------------------------


def write_wav(path: str | Path, clip: Clip) -> Path:
    """Write the clip as mono 16-bit PCM WAV, atomically (temp file in the same folder, then rename).

    Returns the path written. A failure leaves no file (and no temp file) behind.
    """
    path = Path(path)
    pcm = np.round(np.clip(clip.waveform, -1.0, 1.0) * 32767.0).astype("<i2")  # [T]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            with wave.open(handle, "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(clip.sample_rate)
                out.writeframes(pcm.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
