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
    run: Callable[..., dict]  # (quick: bool, plot_dir: Path | None[, device]) -> {"rows": [...], "goals": [...]}
    takes_device: bool = False  # run also takes device= (`ponder bench NAME --device cuda`)


def _text_overhead(**kw):
    from ponder.bench.text_overhead import run

    return run(**kw)


def _text_zoo(**kw):
    from ponder.bench.text_zoo import run

    return run(**kw)


def _text_verifiers(**kw):
    from ponder.bench.text_verifiers import run

    return run(**kw)


def _text_scaling(**kw):
    from ponder.bench.text_scaling import run

    return run(**kw)


def _speculative(**kw):
    from ponder.bench.speculative import run

    return run(**kw)


def _kernels(**kw):
    from ponder.bench.kernels import run

    return run(**kw)


def _render(**kw):
    from ponder.bench.render import run

    return run(**kw)


def _context(**kw):
    from ponder.bench.context import run

    return run(**kw)


def _images(**kw):
    from ponder.bench.images import run

    return run(**kw)


def _images_ditto(**kw):
    from ponder.bench.images_ditto import run

    return run(**kw)


BENCHES: dict[str, BenchSpec] = {
    "text-overhead": BenchSpec("ponder plain decoding vs HF generate on zoo:arith (tokens/s ratio, goal >= 0.9)",
                               _text_overhead),
    "text-zoo": BenchSpec("zoo:arith-draft step cost vs zoo:arith (goal <= 1/10), greedy agreement, target accuracy",
                          _text_zoo),
    "text-verifiers": BenchSpec("zoo orm / prm on 240 held-out arith problems: best-of-8 pick vs a random "
                                "sample, within-problem AUROC, PRM balanced step accuracy (with standard errors)",
                                _text_verifiers),
    "text-scaling": BenchSpec("accuracy vs N, tokens and wall time for every scaling strategy on arith "
                              "(writes JSON + PNG; goal: best-of-16 <= 3x one sample)", _text_scaling),
    "speculative": BenchSpec("speculative / prompt lookup vs plain decoding and HF assisted generation / prompt "
                             "lookup on zoo:arith (goals: >= 2.0x plain at T=0, >= 1.3x HF assisted; chain "
                             "decoders' efficiency over their bare calls >= 0.9; sampled plain >= 0.95x HF generate)",
                             _speculative),
    "kernels": BenchSpec("shared-prefix (cascade) KV vs today's per-row copy for best-of-64 on arith (P=200) and "
                         "pycode (P=1500): KV bytes allocated / read per step (goal >= 90% of ideal), wall <= 0.7x; "
                         "beam / particles with forked caches vs best-of-16 (goal <= 1.5x); Recycled Attention's "
                         "speed and agreement; --device cuda: kernel bandwidth and cascade speedup", _kernels,
                         takes_device=True),
    "render": BenchSpec("render200 and a mixed text + image job, item by item vs fused (continuous batching; goal "
                        ">= 3x items/s, identical outputs), one worker and two Ray workers: rows per step, padding "
                        "(goal <= 15 % with length buckets), the cost model's ETA after the first 10 % (goal "
                        "within 20 %)", _render),
    "context": BenchSpec("RAPID (draft reads retrieved chunks) vs speculative and plain decoding on ~1900-token "
                         "zoo:pycode prompts (goal >= 1.5x plain, lossless); the zoo:facts parts are not built",
                         _context),
    "images": BenchSpec("zoo:digits noise search (random / zero-order / paths) vs more denoising steps at equal NFEs "
                        "on a held-out judge (+ SJD vs plain AR on zoo:digits-ar when present)", _images),
    "images-ditto": BenchSpec("zoo:digits DITTO / DITTO-2 noise optimisation (classifier log-prob) vs plain sampling "
                              "and random search at DITTO-2's wall time, on a held-out judge", _images_ditto),
}


def benches() -> dict[str, BenchSpec]:
    """ponder's own benches and those each registered modality adds (its spec's `benches`)."""
    import importlib

    from ponder.modalities import registry

    table = dict(BENCHES)
    for spec in registry.specs().values():
        for name, entry in spec.benches.items():
            if name in table:
                raise ConfigError(f"bench {name!r} of modality {spec.name!r} clashes with an existing bench")
            module, _, function = entry.run.partition(":")

            def run(module=module, function=function, **kw):
                return getattr(importlib.import_module(module), function)(**kw)

            table[name] = BenchSpec(entry.summary, run)
    return table


def machine() -> str:
    import torch

    from ponder.jobs.state import cpu_name

    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def run(name: str, quick: bool = False, plot_dir: Path | None = None, device: str | None = None) -> dict:
    table = benches()
    if name not in table:
        raise ConfigError(f"unknown bench {name!r}; available: {', '.join(table)}")
    extra = {}
    if device is not None:
        if not table[name].takes_device:
            takers = [n for n, spec in table.items() if spec.takes_device]
            raise ConfigError(f"bench {name!r} runs on the CPU only and takes no --device; "
                              f"--device is for: {', '.join(takers)}")
        extra["device"] = device
    out = table[name].run(quick=quick, plot_dir=plot_dir, **extra)
    return {"bench": name, "machine": machine(), "rows": out["rows"], "goals": out["goals"]}


def goal(name: str, target: str, value: float, met: bool) -> dict:
    return {"name": name, "target": target, "value": round(float(value), 4), "met": bool(met)}


def format_report(report: dict) -> str:
    """A plain-text table of the rows (columns sized to fit; missing values blank) and the goals."""
    lines = [f"== {report['bench']} on {report['machine']}"]
    rows = report["rows"]
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))

        def cell(value) -> str:
            if value is None:
                return ""
            return f"{value:.4g}" if isinstance(value, float) else str(value)

        cells = [[cell(row.get(k)) for k in keys] for row in rows]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        lines.append("  ".join(k.rjust(w) for k, w in zip(keys, widths)))
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    for g in report["goals"]:
        lines.append(f"goal {g['name']}: {g['value']} (target {g['target']}) -> {'MET' if g['met'] else 'NOT MET'}")
    return "\n".join(lines)
