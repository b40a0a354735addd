"""Benchmarks: `ponder bench NAME` prints ratios against a baseline measured in the same run.

Every bench returns ``{"bench", "machine", "rows": [...], "goals": [{"name", "target", "value",
"met"}]}``; `--plot DIR` writes the PNGs a bench draws.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ponder.errors import ConfigError


@dataclass(frozen=True)
class BenchSpec:
    summary: str
    run: Callable[..., dict]  # (quick: bool, plot_dir: Path | None) -> {"rows": [...], "goals": [...]}


def _text_overhead(**kw):
    from ponder.bench.text_overhead import run

    return run(**kw)


def _text_zoo(**kw):
    from ponder.bench.text_zoo import run

    return run(**kw)


def _text_verifiers(**kw):
    from ponder.bench.text_verifiers import run

    return run(**kw)


BENCHES: dict[str, BenchSpec] = {
    "text-overhead": BenchSpec("ponder plain decoding vs HF generate on zoo:arith (tokens/s ratio, goal >= 0.9)",
                               _text_overhead),
    "text-zoo": BenchSpec("zoo:arith-draft step cost vs zoo:arith (goal <= 1/10), greedy agreement, target accuracy",
                          _text_zoo),
    "text-verifiers": BenchSpec("zoo orm / prm on arith samples: AUROC and best-of-8 pick vs a random sample",
                                _text_verifiers),
}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def run(name: str, quick: bool = False, plot_dir: Path | None = None) -> dict:
    if name not in BENCHES:
        raise ConfigError(f"unknown bench {name!r}; available: {', '.join(BENCHES)}")
    out = BENCHES[name].run(quick=quick, plot_dir=plot_dir)
    return {"bench": name, "machine": machine(), "rows": out["rows"], "goals": out["goals"]}


def goal(name: str, target: str, value: float, met: bool) -> dict:
    return {"name": name, "target": target, "value": round(float(value), 4), "met": bool(met)}


def format_report(report: dict) -> str:
    lines = [f"== {report['bench']} on {report['machine']}"]
    if report["rows"]:
        keys = list(report["rows"][0])
        lines.append("  ".join(f"{k:>14}" for k in keys))
        for row in report["rows"]:
            lines.append("  ".join(f"{row.get(k, ''):>14}" if not isinstance(row.get(k), float)
                                   else f"{row[k]:>14.4g}" for k in keys))
    for g in report["goals"]:
        lines.append(f"goal {g['name']}: {g['value']} (target {g['target']}) -> {'MET' if g['met'] else 'NOT MET'}")
    return "\n".join(lines)
