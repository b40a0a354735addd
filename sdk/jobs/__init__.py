"""Batch rendering jobs: ``ponder render JOBS.yaml --out DIR [--backend local|ray]``.

    from ponder.jobs import load_job, run_job
    job = load_job("demos/showcase.yaml")        # validated and expanded up front
    summary = run_job(job, "out/showcase")       # resumable; writes manifest.jsonl
    summary.done, summary.failed, summary.compute

See `ponder.jobs.spec` for the job file format and `ponder.jobs.store` for the output folder.
"""

from __future__ import annotations

from ponder.jobs.runner import BACKENDS, Summary, format_plan, plan, plan_dict, run_job
from ponder.jobs.spec import Item, Job, load_job, parse_job

__all__ = ["BACKENDS", "Item", "Job", "Summary", "format_plan", "load_job", "parse_job", "plan", "plan_dict", "run_job"]
