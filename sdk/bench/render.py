"""`ponder bench render`: render jobs item by item (today's path) against fused (continuous batching
across items), one worker and two, and the cost model's ETA after the first tenth of a job.

Jobs: `demos/render200.yaml` (200 zoo:arith items: 4 prompts x 50 seeds, best-of-2 with the exact
checker) and `demos/mixed.yaml` (56 items: arith prompts under best-of-n, self-consistency, beam with
the process verifier and greedy; zoo:pycode prompts of 15 to 150 tokens; zoo:digits diffusion and
zoo:digits-ar autoregressive images). Every run starts from an empty output folder and its own cost
table (its own `PONDER_HOME`), with one torch thread per worker. Rows:

- render200 on one local worker, item by item and fused (also in seed-major order: every prompt in
  each tenth): when 10 % of the items are done, the progress bar's eta (the cost model,
  `ponder.jobs.costs`, refitted on the items so far) is compared with the time the rest took; and
  once fused the way `ponder render --dry-run` sees it: the first tenth rendered alone, then the dry
  run's estimate of the other 90 % against their time;
- render200 on two Ray workers (a local Ray), item by item and fused (start-up included; left out
  under --quick and without the ray extra);
- the mixed job item by item, fused, and fused without length buckets.

Each fused run's outputs are compared with the item-by-item run's (`ponder.jobs.compare`: output
files byte for byte, result.json's floats within 1e-4). Items/s is over the whole job.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path

from ponder.bench import goal


def _job_file(name: str) -> Path:
    """A job file of demos/, found as a data file of the demos package (its code is never imported:
    the sdk does not import the demos room)."""
    from ponder.errors import ConfigError

    spec = importlib.util.find_spec("ponder.demos")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    path = (folder or Path("demos")) / name
    if not path.is_file():
        raise ConfigError(f"bench render needs the job at {path}; it ships in the repository's demos/")
    return path


class _Home:
    """A fresh `PONDER_HOME` (cost table, fingerprints) for one run, restored afterwards."""

    def __init__(self, folder: Path):
        self.folder, self.previous = folder, None

    def __enter__(self):
        self.previous = os.environ.get("PONDER_HOME")
        os.environ["PONDER_HOME"] = str(self.folder)

    def __exit__(self, *exc):
        if self.previous is None:
            os.environ.pop("PONDER_HOME", None)
        else:
            os.environ["PONDER_HOME"] = self.previous


def _fusion_cells(summary) -> dict:
    stats = summary.fusion
    if stats is None or not stats.steps:
        return {"rows_per_step": None, "padding": None}
    return {"rows_per_step": round(stats.rows_per_step, 2), "padding": round(stats.padding_fraction, 4)}


def _render(job, label: str, scratch: Path, *, fuse: bool, eta: str | None = None, backend: str = "local",
            workers: int | None = None, buckets: bool = True) -> tuple[dict, Path]:
    """One run of `job` into a fresh folder: its row, and the folder (for comparing outputs).

    eta: "dry-run" — render the first tenth, ask `plan_dict` for the rest, time the rest; "bar" — one
    run, the progress bar's cost-model eta as 10 % of the items are done against the time left then."""
    eta_at = eta == "bar"
    from ponder.jobs import plan_dict, run_job
    from ponder.jobs.spec import Job

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    out = run_dir / "out"
    options = {"fuse": fuse, "buckets": buckets, "progress": False, "backend": backend, "workers": workers}
    if backend == "local":
        options["threads"] = 1
    marks: list[tuple[float, float | None]] = []  # (when, the cost model's eta) as 10 % of the job is done

    def watch(done: int, total: int, eta: float | None) -> None:
        if eta_at and not marks and done >= max(1, total // 10):
            marks.append((time.perf_counter(), eta))

    estimate = None
    with _Home(run_dir / "home"):
        start = time.perf_counter()
        if eta == "dry-run":  # the first tenth alone, then the dry run's estimate of the rest
            tenth = max(1, len(job.items) // 10)
            run_job(Job(job.name, job.source, job.items[:tenth]), out, **options)
            estimate = plan_dict(job, out)["estimate"]["seconds"]
        rest_start = time.perf_counter()
        summary = run_job(job, out, on_progress=watch, **options)
        end = time.perf_counter()
    if eta_at and marks:
        rest_start, estimate = marks[0]
    rest = end - rest_start
    error = abs(estimate - rest) / rest if estimate is not None and rest > 0 else None
    row = {"run": label, "eta_from": eta, "items": len(job.items), "failed": summary.failed,
           "seconds": round(end - start, 2),
           "items_per_s": round(len(job.items) / (end - start), 3), **_fusion_cells(summary),
           "eta_estimate_s": None if estimate is None else round(estimate, 2),
           "eta_actual_s": round(rest, 2) if estimate is not None else None,
           "eta_error": None if error is None else round(error, 4)}
    return row, out


def _same(row: dict, mine: Path, reference: Path) -> None:
    from ponder.jobs.compare import compare_outputs

    comparison = compare_outputs(mine, reference)
    row["outputs_vs_item_by_item"] = "identical" if comparison.same else f"{len(comparison.differing)} differ"
    row["max_float_gap"] = comparison.max_float_gap


def run(quick: bool = False, plot_dir=None) -> dict:
    from ponder.jobs import load_job
    from ponder.jobs.spec import Job

    render200 = load_job(_job_file("render200.yaml"))
    mixed = load_job(_job_file("mixed.yaml"))
    if quick:
        render200 = Job(render200.name, render200.source, render200.items[:40])
        mixed = Job(mixed.name, mixed.source, mixed.items[::4])
    seed_major = Job(render200.name, render200.source, sorted(render200.items, key=lambda item: (item.seed, item.id)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ponder-bench-render-") as scratch:
        scratch = Path(scratch)
        alone, alone_out = _render(render200, "render200, item by item, 1 worker", scratch, fuse=False, eta="bar")
        fused, fused_out = _render(render200, "render200, fused, 1 worker", scratch, fuse=True, eta="bar")
        major, major_out = _render(seed_major, "render200 seed-major, fused, 1 worker", scratch, fuse=True, eta="bar")
        dry, dry_out = _render(render200, "render200, fused, 1 worker, dry run after the first tenth", scratch,
                               fuse=True, eta="dry-run")
        for row, out in ((fused, fused_out), (major, major_out), (dry, dry_out)):
            _same(row, out, alone_out)
        rows += [alone, fused, major, dry]
        ray_rows = []
        if not quick and importlib.util.find_spec("ray") is not None:  # the ray extra; --quick leaves Ray out
            ray_alone, ray_alone_out = _render(render200, "render200, item by item, 2 Ray workers", scratch,
                                               fuse=False, backend="ray", workers=2)
            ray_fused, ray_fused_out = _render(render200, "render200, fused, 2 Ray workers", scratch, fuse=True,
                                               backend="ray", workers=2)
            _same(ray_alone, ray_alone_out, alone_out)
            _same(ray_fused, ray_fused_out, alone_out)
            ray_rows = [ray_alone, ray_fused]
        rows += ray_rows
        mixed_alone, mixed_alone_out = _render(mixed, "mixed, item by item, 1 worker", scratch, fuse=False)
        mixed_fused, mixed_fused_out = _render(mixed, "mixed, fused, 1 worker", scratch, fuse=True)
        mixed_flat, mixed_flat_out = _render(mixed, "mixed, fused without length buckets", scratch, fuse=True,
                                             buckets=False)
        _same(mixed_fused, mixed_fused_out, mixed_alone_out)
        _same(mixed_flat, mixed_flat_out, mixed_alone_out)
        rows += [mixed_alone, mixed_fused, mixed_flat]

    speedup = fused["items_per_s"] / alone["items_per_s"]
    identical = fused["outputs_vs_item_by_item"] == "identical"
    goals = [
        goal("render200 fused / item-by-item items/s, one worker, identical outputs", ">= 3.0", speedup,
             speedup >= 3.0 and identical),
        goal("padding fraction, mixed job fused with length buckets", "<= 0.15", mixed_fused["padding"] or 0.0,
             (mixed_fused["padding"] or 0.0) <= 0.15),
        goal("padding fraction, render200 fused (one length bucket)", "<= 0.15", fused["padding"] or 0.0,
             (fused["padding"] or 0.0) <= 0.15),
    ]
    for row in (alone, fused, major, dry):
        error = row["eta_error"]
        how = "the progress bar's eta" if row["eta_from"] == "bar" else "the dry run's estimate"
        goals.append(goal(f"cost-model ETA after the first 10 % ({row['run']}; {how}): |estimate - actual| / actual",
                          "<= 0.2", error if error is not None else float("inf"), error is not None and error <= 0.2))
    if ray_rows:
        ratio = ray_rows[1]["items_per_s"] / ray_rows[0]["items_per_s"]
        goals.append(goal("render200 fused / item-by-item items/s, two Ray workers (reported)", "reported", ratio,
                          True))
    mixed_ratio = mixed_fused["items_per_s"] / mixed_alone["items_per_s"]
    goals.append(goal("mixed job fused / item-by-item items/s, one worker (reported)", "reported", mixed_ratio, True))
    return {"rows": rows, "goals": goals}
