"""`ponder bench render`: a render job's throughput on today's per-item path, and how close the cost
model's estimate comes after the job's first tenth.

The job is `demos/render200.yaml` (200 zoo:arith items: 4 prompts x 50 seeds, best-of-2 with the exact
checker), in file order (all of a prompt's seeds together) and seed-major (every prompt in each
tenth), each into a fresh output folder with a fresh cost table (its own `PONDER_HOME`). After the
first 10 % of the items the cost model (`ponder.jobs.costs`) is asked how long the remaining 90 %
will take, the way `ponder render --dry-run` would; the rest of the job then runs and the estimate
is compared with the time it took. Items/s is over the whole job, one local worker, one thread.
The fused path (continuous batching across items) is not built yet, so there is no fused row.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ponder.bench import goal


def _job_file() -> Path:
    """demos/render200.yaml, found as a data file of the demos package (its code is never imported:
    the sdk does not import the demos room)."""
    import importlib.util

    from ponder.errors import ConfigError

    spec = importlib.util.find_spec("ponder.demos")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    path = (folder or Path("demos")) / "render200.yaml"
    if not path.is_file():
        raise ConfigError(f"bench render needs the render200 job at {path}; it ships in the repository's demos/")
    return path


def _measure(job, order: str) -> dict:
    from ponder.jobs import plan_dict, run_job
    from ponder.jobs.spec import Job

    with tempfile.TemporaryDirectory(prefix="ponder-bench-render-") as scratch:
        home, out = Path(scratch) / "home", Path(scratch) / "out"
        previous = os.environ.get("PONDER_HOME")
        os.environ["PONDER_HOME"] = str(home)
        try:
            tenth = max(1, len(job.items) // 10)
            start = time.perf_counter()
            run_job(Job(job.name, job.source, job.items[:tenth]), out, threads=1, progress=False)
            first = time.perf_counter() - start
            estimate = plan_dict(job, out)["estimate"]["seconds"]
            start = time.perf_counter()
            summary = run_job(job, out, threads=1, progress=False)
            rest = time.perf_counter() - start
        finally:
            if previous is None:
                os.environ.pop("PONDER_HOME", None)
            else:
                os.environ["PONDER_HOME"] = previous
    error = abs(estimate - rest) / rest if estimate is not None else None
    return {"order": order, "items": len(job.items), "failed": summary.failed,
            "first_tenth_s": round(first, 3), "estimate_s": estimate, "rest_s": round(rest, 3),
            "eta_error": None if error is None else round(error, 4),
            "items_per_s": round(len(job.items) / (first + rest), 3)}


def run(quick: bool = False, plot_dir=None) -> dict:
    from ponder.jobs import load_job
    from ponder.jobs.spec import Job

    job = load_job(_job_file())
    if quick:
        job = Job(job.name, job.source, job.items[:40])
    seed_major = Job(job.name, job.source, sorted(job.items, key=lambda item: (item.seed, item.id)))
    rows = [_measure(job, "file (one prompt's seeds together)"), _measure(seed_major, "seed-major")]
    goals = [goal(f"cost-model ETA after the first 10 % of render200 ({row['order']}): |estimate - actual| / actual",
                  "<= 0.2", row["eta_error"] if row["eta_error"] is not None else float("inf"),
                  row["eta_error"] is not None and row["eta_error"] <= 0.2) for row in rows]
    goals.append(goal("render200 items/s, today's per-item path, one worker (reported; no fused path yet)",
                      "reported", rows[0]["items_per_s"], True))
    return {"rows": rows, "goals": goals}
