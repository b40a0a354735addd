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


def assert_same_outputs(mine: Path, theirs: Path) -> None:
    """Two output folders hold the same items: every output file (text, image, audio) byte for byte,
    every result.json equal but for its floats (log-probs, scores), which agree within
    `ponder.jobs.compare.TOLERANCE` (a fused batch's forward rounds differently from an item's own)."""
    from ponder.jobs.compare import compare_outputs

    comparison = compare_outputs(mine, theirs)
    assert comparison.items > 0 and comparison.same, comparison.to_dict()
