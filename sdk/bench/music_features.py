"""The music bench's own measurements of a final waveform: loudness, pitch class, section self-similarity
and kept-region spectral distance.

They are deliberately not the controls' losses (`ponder.modalities.music.controls`), which the optimiser
sees: other frames, other windows, another pitch estimator (a harmonic sum over a semitone grid instead of
a chroma filterbank), other features for the section similarity (a linear-frequency log spectrum instead
of a mel one). Everything is numpy on mono float waveforms [T] at `SR`.
"""

from __future__ import annotations

import numpy as np

SR = 16_000
LOUD_FRAME, LOUD_HOP = 800, 400  # 50 ms frames every 25 ms (the controls use 64 ms every 16 ms)
LOUD_SMOOTH_S = 0.5  # the curves compared are smoothed over half a second
PITCH_FRAME, PITCH_HOP, PITCH_FFT = 1600, 320, 8192  # 100 ms windows every 20 ms, zero-padded
MIDI_RANGE = (36, 97)  # candidate fundamentals C2..C7 (tones melodies lie inside)
HARMONICS = 6


def _frames(wave: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """Non-centred frames of [T] -> [F, frame] (the tail that does not fill a frame is dropped)."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    count = 1 + max(0, (len(wave) - frame) // hop)
    index = np.arange(frame)[None] + hop * np.arange(count)[:, None]
    return wave[np.minimum(index, len(wave) - 1)]


def loudness_db(wave: np.ndarray) -> np.ndarray:
    """Frame RMS in dBFS over 50 ms frames every 25 ms, moving-averaged over LOUD_SMOOTH_S -> [F]."""
    db = 10 * np.log10((_frames(wave, LOUD_FRAME, LOUD_HOP) ** 2).mean(1) + 1e-10)
    width = max(1, int(round(LOUD_SMOOTH_S * SR / LOUD_HOP)))
    kernel = np.ones(width) / width
    padded = np.pad(db, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def loudness_times(frames: int) -> np.ndarray:
    """Centre time (s) of each loudness frame."""
    return (np.arange(frames) * LOUD_HOP + LOUD_FRAME / 2) / SR


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def pitch_midi(wave: np.ndarray) -> np.ndarray:
    """The most likely fundamental per 100 ms frame (every 20 ms), as a MIDI number, by a harmonic sum of
    the magnitude spectrum over a semitone grid (each harmonic weighted 1/h, log-compressed) -> [F] ints."""
    frames = _frames(wave, PITCH_FRAME, PITCH_HOP) * np.hanning(PITCH_FRAME)[None]
    mag = np.log1p(np.abs(np.fft.rfft(frames, PITCH_FFT, axis=1)) * 100)  # [F, bins]
    midis = np.arange(*MIDI_RANGE)
    f0 = 440.0 * 2.0 ** ((midis - 69) / 12)  # [P]
    bins = np.arange(mag.shape[1]) * SR / PITCH_FFT
    salience = np.zeros((len(frames), len(midis)))
    for h in range(1, HARMONICS + 1):
        freq = h * f0
        ok = freq < SR / 2 - 100
        salience[:, ok] += np.stack([np.interp(freq[ok], bins, row) for row in mag]) / h
    return midis[salience.argmax(1)]


def pitch_times(frames: int) -> np.ndarray:
    return (np.arange(frames) * PITCH_HOP + PITCH_FRAME / 2) / SR


def melody_accuracy(wave: np.ndarray, notes: list[tuple[float, float, int]], margin_s: float = 0.05) -> float:
    """Fraction of the reference's sounding frames (a frame centre inside a note, `margin_s` from its
    ends) whose estimated pitch class in `wave` equals the note's. notes: (onset s, duration s, MIDI)."""
    pitches = pitch_midi(wave)
    times = pitch_times(len(pitches))
    hits = total = 0
    for onset, duration, midi in notes:
        inside = (times >= onset + margin_s) & (times <= onset + duration - margin_s)
        total += int(inside.sum())
        hits += int((pitches[inside] % 12 == midi % 12).sum())
    return hits / total if total else float("nan")


def log_spectrum(wave: np.ndarray) -> np.ndarray:
    """Log-magnitude linear-frequency spectrum of 32 ms frames every 16 ms -> [F, 257]."""
    frames = _frames(wave, 512, 256) * np.hanning(512)[None]
    return np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-4)


def section_similarity(wave: np.ndarray, sections: int) -> np.ndarray:
    """Mean cosine similarity of frame t of section i and frame t of section j of the log spectrum
    (offset to be non-negative) -> [L, L]."""
    spec = log_spectrum(wave) + 4.0  # >= 0
    spec /= np.linalg.norm(spec, axis=1, keepdims=True) + 1e-9
    per = len(spec) // sections
    blocks = spec[: per * sections].reshape(sections, per, -1)
    return np.einsum("itd,jtd->ij", blocks, blocks) / per


def form_contrast(wave: np.ndarray, form: str) -> float:
    """Mean section similarity of same-letter pairs minus that of different-letter pairs (i < j);
    NaN for a form with only one kind of pair."""
    sim = section_similarity(wave, len(form))
    same, diff = [], []
    for i in range(len(form)):
        for j in range(i + 1, len(form)):
            (same if form[i] == form[j] else diff).append(sim[i, j])
    return float(np.mean(same) - np.mean(diff)) if same and diff else float("nan")


def kept_distance(wave: np.ndarray, reference: np.ndarray, start_s: float, end_s: float,
                  margin_s: float = 0.05) -> float:
    """Mean absolute log-spectrum difference (log10 units) of `wave` and `reference` over the frames wholly
    outside [start_s - margin, end_s + margin]."""
    a, b = log_spectrum(wave), log_spectrum(reference)
    n = min(len(a), len(b))
    start = (np.arange(n) * 256) / SR
    end = start + 512 / SR
    kept = (end <= start_s - margin_s) | (start >= end_s + margin_s)
    return float(np.abs(a[:n][kept] - b[:n][kept]).mean())


__all__ = ["form_contrast", "kept_distance", "loudness_db", "loudness_times", "melody_accuracy", "pearson",
           "pitch_midi", "section_similarity"]
