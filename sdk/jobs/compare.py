"""Whether two output folders hold the same renders: output files byte for byte, result.json equal but
for its floats, which may differ by float rounding (a fused batch's forward sums in another order)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TOLERANCE = 1e-4  # log-probs and scores of one render, fused or not, agree to about 1e-5 on a CPU


@dataclass
class Comparison:
    """How two output folders compare, over the items both hold."""

    items: int = 0  # items compared
    files: int = 0  # output files compared byte for byte (result.json aside)
    differing: list[str] = field(default_factory=list)  # files (or result.json fields) that differ
    max_float_gap: float = 0.0  # largest |a - b| over result.json's floats
    missing: list[str] = field(default_factory=list)  # files one folder holds and the other does not

    @property
    def same(self) -> bool:
        return not self.differing and not self.missing

    def to_dict(self) -> dict:
        return {"items": self.items, "files": self.files, "differing": self.differing[:20],
                "differing_count": len(self.differing), "missing": self.missing[:20],
                "max_float_gap": self.max_float_gap}


def _walk(mine, theirs, where: str, out: Comparison, tolerance: float) -> None:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        if mine.keys() != theirs.keys():
            out.differing.append(f"{where} (keys)")
            return
        for key in mine:
            _walk(mine[key], theirs[key], f"{where}.{key}", out, tolerance)
    elif isinstance(mine, list) and isinstance(theirs, list):
        if len(mine) != len(theirs):
            out.differing.append(f"{where} (length)")
            return
        for index, (a, b) in enumerate(zip(mine, theirs)):
            _walk(a, b, f"{where}[{index}]", out, tolerance)
    elif isinstance(mine, float) and isinstance(theirs, float):
        gap = abs(mine - theirs)
        out.max_float_gap = max(out.max_float_gap, gap)
        if gap > tolerance:
            out.differing.append(where)
    elif mine != theirs:
        out.differing.append(where)


def compare_outputs(mine: str | Path, theirs: str | Path, tolerance: float = TOLERANCE) -> Comparison:
    """Compare every item folder of two render outputs (the manifests aside: they hold wall times)."""
    mine, theirs = Path(mine), Path(theirs)
    out = Comparison()

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and p.name != "manifest.jsonl" and not p.name.startswith(".ponder-")}

    left, right = files(mine), files(theirs)
    out.missing = sorted(left ^ right)
    for name in sorted(left & right):
        a, b = (mine / name).read_bytes(), (theirs / name).read_bytes()
        if name.endswith("result.json"):
            out.items += 1
            _walk(json.loads(a), json.loads(b), name, out, tolerance)
        else:
            out.files += 1
            if a != b:
                out.differing.append(name)
    return out
