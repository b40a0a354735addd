"""Outputs beyond text and PIL images that every surface knows how to write, show and play.

`Audio` is what an audio modality's `decode` returns: a waveform in [-1, 1] and its sample rate.
`AudioOutput` is the protocol the surfaces check (`isinstance`), so a modality may return its own
class with the same two members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class AudioOutput(Protocol):
    """A waveform with its sample rate; `--out`, render jobs and the demo write it as 16-bit WAV."""

    waveform: Any  # Tensor | ndarray, [samples] or [channels, samples], values in [-1, 1]
    sample_rate: int  # samples per second


@dataclass
class Audio:
    """One audio output: `waveform` [samples] or [channels, samples] in [-1, 1], at `sample_rate` Hz."""

    waveform: Any
    sample_rate: int

    @property
    def seconds(self) -> float:
        return int(self.waveform.shape[-1]) / self.sample_rate

    def to_dict(self) -> dict:
        # results carry audio as a file (under --out) or this short description, never raw samples
        return {"audio_seconds": round(self.seconds, 4), "sample_rate": self.sample_rate}
