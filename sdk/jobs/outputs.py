"""The one writer of results: a `Result` becomes the bytes of its files, for `--out` and render jobs.

An output's file is chosen by the kind of output it is (`ponder.modalities.registry.kind_of`: text
-> .txt, an image -> .png, audio -> .wav, token ids -> .json, or a kind a modality declares in its
spec), never by modality name. ``result.json`` has one shape wherever it is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ponder.modalities.registry import OutputKind, kind_of

__all__ = ["encoder_for", "payload_lines", "real_time_factor", "result_files", "write_result"]


def encoder_for(output: Any) -> OutputKind:
    """The kind of `output`, which says its file suffix and how to encode it."""
    return kind_of(output)


def real_time_factor(result, seconds: float) -> float | None:
    """Seconds of compute per second of audio the result made (over all its candidates); None when no
    candidate is audio."""
    from ponder.modalities.registry import AUDIO

    audio = sum(c.output.seconds for c in result.candidates if kind_of(c.output) is AUDIO)
    return round(seconds / audio, 4) if audio > 0 else None


def result_files(item_spec: dict, result, *, timing: bool = False) -> dict[str, bytes]:
    """The files of one result: every candidate, the best one, and ``result.json``.

    ``result.json`` holds the request (`item_spec`) and ``Result.to_dict()``. Without `timing` the wall
    time is left out (it differs run to run; render jobs keep it in the manifest), so the same request
    and seed give the same bytes on any backend; with `timing` (``ponder generate --out``) it keeps
    ``compute.seconds`` and, for audio, ``compute.real_time_factor`` (`real_time_factor`). An output
    that is not text is held by its file (``"output": null, "file": NAME``).
    """
    files: dict[str, bytes] = {}
    names = []
    for i, cand in enumerate(result.candidates):
        kind = encoder_for(cand.output)
        name = f"candidate_{i:03d}{kind.suffix}"
        files[name] = kind.encode(cand.output)
        names.append(name)
    best_name = None
    if result.best is not None:
        kind = encoder_for(result.best.output)
        best_name = f"best{kind.suffix}"
        files[best_name] = kind.encode(result.best.output)
    payload = result.to_dict()
    if timing:
        rtf = real_time_factor(result, result.compute.seconds)
        if rtf is not None:
            payload["compute"]["real_time_factor"] = rtf
    else:
        payload["compute"].pop("seconds", None)
    for shown, cand, name in zip(payload["candidates"], result.candidates, names):
        if not isinstance(cand.output, str):
            shown["output"] = None  # the file holds it
        shown["file"] = name
    if payload["best"] is not None:
        if not isinstance(result.best.output, str):
            payload["best"]["output"] = None
        payload["best"]["file"] = best_name
    document = {"item": item_spec, "best_file": best_name, **payload}
    files["result.json"] = (json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode()
    return files


def write_result(folder: str | Path, item_spec: dict, result, *, timing: bool = False) -> list[str]:
    """Write `result_files` (with `timing`) into `folder`, each file atomically, ``result.json`` last (so a
    folder with a ``result.json`` is complete). Returns the file names written."""
    from ponder.jobs.store import write_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = result_files(item_spec, result, timing=timing)
    for name, data in files.items():
        if name != "result.json":
            write_atomic(folder / name, data)
    write_atomic(folder / "result.json", files["result.json"])
    return list(files)


def payload_lines(result) -> dict:
    """``Result.to_dict()`` with every output that is not text described in one line (``<image 16x16 L
    sha256:...>``), and ``compute.real_time_factor`` for audio: the ``--json`` form and what the demo's
    tables show."""
    payload = result.to_dict()
    rtf = real_time_factor(result, result.compute.seconds)
    if rtf is not None:
        payload["compute"]["real_time_factor"] = rtf
    for shown, cand in zip([payload["best"], *payload["candidates"]], [result.best, *result.candidates]):
        if shown is not None and not isinstance(cand.output, str):
            shown["output"] = encoder_for(cand.output).line(cand.output)
    return payload
