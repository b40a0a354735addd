"""Readers of a job's output folder, shared by the batch-job tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def read_output(out: Path) -> tuple[dict[str, dict], list[dict]]:
    """(item id -> latest manifest entry, every manifest entry in order), checking each line parses."""
    lines = (out / "manifest.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    return {e["id"]: e for e in entries}, entries


def check_files_match_manifest(out: Path, entry: dict) -> None:
    for name, info in entry["files"].items():
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"], name
        assert len(data) == info["bytes"], name


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".ponder-")
            and p.name != ".ponder-render.lock"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """relative path -> bytes of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_json(mine, theirs, where: str, tolerance: float) -> None:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        assert mine.keys() == theirs.keys(), where
        for key in mine:
            _same_json(mine[key], theirs[key], f"{where}.{key}", tolerance)
    elif isinstance(mine, list) and isinstance(theirs, list):
        assert len(mine) == len(theirs), where
        for index, (a, b) in enumerate(zip(mine, theirs)):
            _same_json(a, b, f"{where}[{index}]", tolerance)
    elif isinstance(mine, float) and isinstance(theirs, float):
        assert abs(mine - theirs) <= tolerance, f"{where}: {mine} != {theirs}"
    else:
        assert mine == theirs, f"{where}: {mine!r} != {theirs!r}"


def assert_same_outputs(mine: Path, theirs: Path, tolerance: float = 1e-4) -> None:
    """Two output folders hold the same items: every output file (text, image, audio) byte for byte,
    every result.json equal but for its floats (log-probs, scores), which agree within `tolerance`
    (a fused batch's forward rounds differently from an item's own)."""
    files = {k: v for k, v in snapshot(mine).items() if k != "manifest.jsonl"}
    other = {k: v for k, v in snapshot(theirs).items() if k != "manifest.jsonl"}
    assert sorted(files) == sorted(other)
    for name, data in files.items():
        if name.endswith("result.json"):
            _same_json(json.loads(data), json.loads(other[name]), name, tolerance)
        else:
            assert data == other[name], name
