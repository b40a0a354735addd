"""Turning a `Result` into the bytes of an item's files, by the type of each output.

The runner never asks which modality produced an output: an encoder is picked by what the output
is (text -> .txt, an image -> .png, audio -> .wav, token ids -> .json). A new modality whose
outputs are one of these needs nothing here; one with a new kind of output registers an encoder
with `register_encoder`.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ponder.errors import InputError


@dataclass(frozen=True)
class Encoder:
    """How one kind of output becomes a file."""

    kind: str  # "text" | "image" | "audio" | ...
    suffix: str  # file suffix, with the dot
    accepts: Callable[[Any], bool]
    encode: Callable[[Any], bytes]


def _is_image(output: Any) -> bool:  # a PIL image, without importing PIL
    return all(hasattr(output, a) for a in ("save", "mode", "size"))


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # no timestamps: the same pixels give the same bytes
    return buffer.getvalue()


def _is_audio(output: Any) -> bool:
    return hasattr(output, "waveform") and hasattr(output, "sample_rate")


def _wav(audio: Any) -> bytes:
    """16-bit PCM WAV of a waveform in [-1, 1], shaped [samples] or [channels, samples]."""
    import numpy as np

    wave_data = audio.waveform
    if hasattr(wave_data, "detach"):
        wave_data = wave_data.detach().float().cpu().numpy()
    samples = np.asarray(wave_data, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[None, :]
    if samples.ndim != 2:
        raise InputError(f"audio waveform must be [samples] or [channels, samples], got shape {samples.shape}")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")  # [C, T]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(int(audio.sample_rate))
        w.writeframes(pcm.T.tobytes())  # interleaved frames: [T, C]
    return buffer.getvalue()


def _is_token_ids(output: Any) -> bool:
    return isinstance(output, (list, tuple)) and all(isinstance(t, int) for t in output)


ENCODERS: list[Encoder] = [
    Encoder("text", ".txt", lambda o: isinstance(o, str), lambda o: o.encode("utf-8")),
    Encoder("image", ".png", _is_image, _png),
    Encoder("audio", ".wav", _is_audio, _wav),
    Encoder("tokens", ".json", _is_token_ids, lambda o: (json.dumps(list(o)) + "\n").encode()),
]


def register_encoder(encoder: Encoder) -> None:
    """Add an encoder for a new kind of output (checked before the built-in ones)."""
    ENCODERS.insert(0, encoder)


def encoder_for(output: Any) -> Encoder:
    for encoder in ENCODERS:
        if encoder.accepts(output):
            return encoder
    raise InputError(f"no file encoder for an output of type {type(output).__name__}; "
                     f"known kinds: {', '.join(e.kind for e in ENCODERS)}")


def result_files(item_spec: dict, result) -> dict[str, bytes]:
    """The files of one item: every candidate, the best one, and ``result.json``.

    ``result.json`` holds the item's spec and ``Result.to_dict()`` except the wall time (which
    differs run to run and lives in the manifest), so the same item and seed give the same bytes
    on any backend.
    """
    files: dict[str, bytes] = {}
    names = []
    for i, cand in enumerate(result.candidates):
        encoder = encoder_for(cand.output)
        name = f"candidate_{i:03d}{encoder.suffix}"
        files[name] = encoder.encode(cand.output)
        names.append(name)
    best_name = None
    if result.best is not None:
        encoder = encoder_for(result.best.output)
        best_name = f"best{encoder.suffix}"
        files[best_name] = encoder.encode(result.best.output)
    payload = result.to_dict()
    payload["compute"].pop("seconds", None)
    for shown, cand, name in zip(payload["candidates"], result.candidates, names):
        if not isinstance(cand.output, str):
            shown["output"] = None  # the file holds it
        shown["file"] = name
    if payload["best"] is not None and not isinstance(result.best.output, str):
        payload["best"]["output"] = None
    document = {"item": item_spec, "best_file": best_name, **payload}
    files["result.json"] = (json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode()
    return files
