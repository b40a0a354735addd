"""The driver of a job: decide what is left, hand items to a backend, write what comes back.

The driver alone writes: each outcome's files go into the item's folder atomically, then one line
goes into ``manifest.jsonl``. Backends only render (the local one in this process, the Ray one in
model-holding actors), so both give the same bytes for the same items and seeds, and resume works
the same whichever backend wrote the folder before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ponder.errors import ConfigError, check_int
from ponder.jobs.costs import CostTable, format_seconds
from ponder.jobs.fingerprint import item_fingerprint
from ponder.jobs.spec import Item, Job
from ponder.jobs.store import OutputDir
from ponder.jobs.worker import Outcome, Worker
from ponder.search.decoding.continuous import MAX_ROWS, FusionStats

BACKENDS = ("local", "ray")
COMPUTE_FIELDS = ("model_calls", "draft_calls", "tokens", "nfe", "verifier_calls", "backward_passes", "seconds")


@dataclass
class Summary:
    """How a run went: counts, the failures, compute totals, wall time."""

    job: str
    out: str
    backend: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict] = field(default_factory=list)  # {"id", "error"}
    compute: dict = field(default_factory=lambda: dict.fromkeys(COMPUTE_FIELDS, 0))
    seconds: float = 0.0
    fusion: FusionStats | None = None  # what the running decode batches did (None: rendered item by item)

    @property
    def items_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"job": self.job, "out": self.out, "backend": self.backend, "total": self.total, "done": self.done,
                "skipped": self.skipped, "failed": self.failed, "failures": self.failures,
                "compute": {k: round(v, 3) if isinstance(v, float) else v for k, v in self.compute.items()},
                "seconds": round(self.seconds, 3), "items_per_second": round(self.items_per_second, 3),
                "fusion": None if self.fusion is None else self.fusion.to_dict()}

    def format(self) -> str:
        c = self.compute
        lines = [f"{self.job}: {self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} "
                 f"in {self.seconds:.1f}s ({self.items_per_second:.2f} items/s, backend {self.backend}) -> {self.out}",
                 f"compute: {c['model_calls']} model calls, {c['draft_calls']} draft calls, {c['tokens']} tokens, "
                 f"{c['nfe']} denoiser evals, {c['verifier_calls']} verifier calls, {c['seconds']:.1f}s in items"]
        if self.fusion is not None and self.fusion.steps:
            f = self.fusion
            lines.append(f"fused: {f.requests} decode requests in {f.steps} batched steps, {f.rows_per_step:.1f} rows "
                         f"a step, padding {100 * f.padding_fraction:.1f}% of attended positions, "
                         f"{f.shared_prefills} prefills shared")
        for failure in self.failures[:10]:
            lines.append(f"failed {failure['id']}: {failure['error']}")
        if len(self.failures) > 10:
            lines.append(f"... and {len(self.failures) - 10} more failures (see manifest.jsonl)")
        return "\n".join(lines)


def plan(job: Job, out: str | Path) -> tuple[list[Item], list[Item]]:
    """(items left to render, items already done in `out`), without writing anything."""
    folder = OutputDir(out)
    entries = folder.read_manifest()
    todo, done = [], []
    memo: dict[str, str] = {}
    for item in job.items:
        weights = item_fingerprint(item, memo)
        (done if folder.is_done(entries.get(item.id), item.config_hash, weights) else todo).append(item)
    return todo, done


def plan_dict(job: Job, out: str | Path) -> dict:
    """The expanded plan as JSON: every item with its config hash and whether `out` has it done."""
    todo, done = plan(job, out)
    done_ids = {item.id for item in done}
    models: dict[str, int] = {}
    for item in job.items:
        models[f"{item.modality}:{item.model}"] = models.get(f"{item.modality}:{item.model}", 0) + 1
    seconds, unknown = CostTable.load().estimate(todo)
    estimate = {"seconds": None if unknown and not seconds else round(seconds, 3), "unpredicted": unknown}
    return {"job": job.name, "source": job.source, "out": str(out), "items": len(job), "to_render": len(todo),
            "already_done": len(done), "candidates": sum(item.n for item in todo), "models": models,
            "estimate": estimate,
            "plan": [{**item.spec(), "config_hash": item.config_hash, "done": item.id in done_ids}
                     for item in job.items]}


def format_plan(plan: dict, limit: int = 50) -> str:
    """`plan_dict` as lines a person reads: one per item, then the totals."""
    lines = []
    for row in plan["plan"][:limit]:
        state = "done" if row["done"] else "todo"
        verifier = row["verifier"] or "-"
        prompt = " ".join(row["prompt"].split())
        prompt = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        lines.append(f"{state}  {row['id']:<32} {row['model']:<14} {row['strategy']:<16} n={row['n']:<3} "
                     f"seed={row['seed']:<4} verifier={verifier:<8} {prompt!r}")
    if len(plan["plan"]) > limit:
        lines.append(f"... and {len(plan['plan']) - limit} more items")
    models = ", ".join(f"{name} ({count})" for name, count in plan["models"].items())
    lines.append(f"{plan['job']}: {plan['items']} items ({plan['to_render']} to render, {plan['already_done']} "
                 f"already done in {plan['out']}), {plan['candidates']} candidates to generate; models: {models}")
    estimate = plan.get("estimate") or {}
    unknown = ", ".join(g.replace("|", " ") for g in estimate.get("unpredicted", []))
    if estimate.get("seconds") is not None:
        line = f"estimated time on this machine: {format_seconds(estimate['seconds'])} (one worker; cost model)"
        lines.append(line + (f"; not estimated, never rendered here: {unknown}" if unknown else ""))
    elif plan["to_render"]:
        lines.append(f"no time estimate: nothing like these items was rendered on this machine yet ({unknown}); "
                     "the cost model fits itself as the job runs")
    return "\n".join(lines)


def _grouped(items: list[Item]) -> list[Item]:
    """Items of one model together (first appearance order), so a worker loads each model once."""
    first: dict[tuple[str, str], int] = {}
    for item in items:
        first.setdefault(item.model_key, len(first))
    return sorted(items, key=lambda item: first[item.model_key])


def local_outcomes(items: list[Item], retries: int, threads: int | None = None, *, fuse: bool = False,
                   max_rows: int = MAX_ROWS, buckets: bool = True,
                   fusion: FusionStats | None = None) -> Iterator[Outcome]:
    """Render `items` in this process, with one model loaded at a time: item after item, or (`fuse`)
    through one running decode batch per model; `fusion` collects the running batches' stats."""
    worker = Worker(threads=threads)
    try:
        if fuse:
            yield from worker.render_fused([(item.spec(), item.config_hash) for item in items], retries,
                                           max_rows=max_rows, buckets=buckets)
        else:
            for item in items:
                yield worker.render(item.spec(), item.config_hash, retries)
    finally:
        if fusion is not None:
            fusion.add(worker.fusion)
        worker.close()


def run_job(job: Job, out: str | Path, *, backend: str = "local", retries: int = 1, address: str | None = None,
            workers: int | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0, threads: int | None = None,
            fuse: bool = True, max_rows: int = MAX_ROWS, buckets: bool = True, ship: str = "auto",
            on_progress: Callable[[int, int, float | None], None] | None = None, progress: bool = True,
            stream: TextIO | None = None) -> Summary:
    """Render every item of `job` not already done under `out`; return the `Summary`.

    Args:
        job: from `load_job`.
        out: the output folder (created if needed); nothing is written outside it.
        backend: "local" (this process) or "ray" (one model-holding actor per worker).
        retries: extra tries for an item that fails unexpectedly (or whose files fail to write).
        address: Ray cluster address (default: the running Ray, else a local one).
        workers: Ray actors (default: the cluster's CPUs / `num_cpus`).
        num_cpus, num_gpus: what each Ray actor reserves.
        threads: torch threads per worker (default: `num_cpus`, i.e. 1). A batch job scales by workers;
            several threads per worker pay off only for one large model on an otherwise idle CPU, and
            on a shared CPU they cost far more than they give (2 threads on 2 busy cores rendered the
            showcase 6x slower than 1 here).
        fuse: decode the items of one model in one running batch (continuous batching across items;
            each worker runs its own); False renders item by item. Text outputs are the same either
            way; log-probs in result.json agree to about 1e-5 (a batched forward rounds differently).
        max_rows: rows a running batch holds before waiting items queue.
        buckets: fused items of one model go shortest prompt first, in length buckets (prompts in
            one running batch within 1.5x of each other); False: in job order, joining whenever
            rows are free.
        ship: what a Ray backend's runtime environment brings to the nodes (`ponder.jobs.ray_env`):
            "auto" (ponder, the job's zoo models and ponder's requirements for a cluster given by
            `address`; nothing for a Ray on this machine), "code", "all" or "none".
        on_progress: called after each item as ``on_progress(items finished or skipped, total, eta)``,
            eta being the cost model's seconds left (None while it cannot predict some item left).
        progress: draw a progress bar with ETA on `stream`.
        stream: where the progress bar goes (default stderr).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be a non-negative integer, got {retries!r}")
    if workers is not None:
        check_int("workers", workers)
    check_int("max_rows", max_rows)
    for name, value in (("fuse", fuse), ("buckets", buckets)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    if num_gpus < 0 or num_cpus <= 0:
        raise ConfigError(f"num_cpus must be > 0 and num_gpus >= 0, got {num_cpus} and {num_gpus}")
    if backend == "ray":
        from ponder.jobs.ray_backend import import_ray
        from ponder.jobs.ray_env import check_can_ship, ship_mode

        # a bad mode, a missing extra, a Ray that cannot take files: all before --out is touched
        check_can_ship(ship_mode(ship, address), ship, import_ray())
    stream = stream or sys.stderr
    threads = threads or max(1, int(num_cpus))
    start = time.perf_counter()
    summary = Summary(job=job.name, out=str(out), backend=backend, total=len(job),
                      fusion=FusionStats() if fuse else None)
    with OutputDir(out) as folder:
        entries = folder.read_manifest()
        memo: dict[str, str] = {}
        weights = {item.id: item_fingerprint(item, memo) for item in job.items}
        todo = [item for item in job.items
                if not folder.is_done(entries.get(item.id), item.config_hash, weights[item.id])]
        summary.skipped = len(job) - len(todo)
        todo = _grouped(todo)
        by_id = {item.id: item for item in todo}
        if backend == "ray":
            from ponder.jobs.ray_backend import ray_outcomes

            outcomes = ray_outcomes(todo, retries, address=address, workers=workers, num_cpus=num_cpus,
                                    num_gpus=num_gpus, threads=threads, fuse=fuse, max_rows=max_rows,
                                    buckets=buckets, ship=ship, fusion=summary.fusion)
        else:
            outcomes = local_outcomes(todo, retries, threads=threads, fuse=fuse, max_rows=max_rows,
                                      buckets=buckets, fusion=summary.fusion)
        bar = _progress(len(job), summary.skipped, progress, stream)
        costs = CostTable.load()
        remaining = dict(by_id)
        try:
            for outcome in outcomes:
                item = by_id[outcome.id]
                _record(folder, item, outcome, retries, summary, weights[outcome.id])
                remaining.pop(outcome.id, None)
                if outcome.files is not None:
                    costs.observe(item, int(outcome.compute.get("tokens", 0)), outcome.seconds - outcome.load_seconds)
                bar.update(1)
                eta = _eta_seconds(costs, list(remaining.values()), workers or 1)
                bar.set_postfix_str(_eta(eta, summary.failed), refresh=False)
                if on_progress is not None:
                    on_progress(summary.done + summary.failed + summary.skipped, len(job), eta)
        finally:
            costs.save()
            bar.close()
            close = getattr(outcomes, "close", None)
            if close is not None:
                close()
    summary.seconds = time.perf_counter() - start
    return summary


def _eta_seconds(costs: CostTable, remaining: list[Item], workers: int) -> float | None:
    """The cost model's time left for `remaining` spread over `workers`; None while some item cannot
    be predicted (0.0 when nothing is left)."""
    seconds, unknown = costs.estimate(remaining)
    if not remaining:
        return 0.0
    return None if unknown else seconds / workers


def _eta(eta: float | None, failed: int) -> str:
    """The progress bar's note: the cost model's time left, failures."""
    parts = []
    if eta:
        parts.append(f"eta {format_seconds(eta)} (cost model)")
    if failed:
        parts.append(f"failed={failed}")
    return ", ".join(parts)


def _progress(total: int, initial: int, enabled: bool, stream: TextIO):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="item", file=stream, disable=not enabled, dynamic_ncols=True,
                smoothing=0.1)


def _record(folder: OutputDir, item: Item, outcome: Outcome, retries: int, summary: Summary,
            weights: str | None = None) -> None:
    """Write an outcome's files (retrying a failed write), then its manifest line (with the item's
    weights fingerprint)."""
    entry = {"id": item.id, "config_hash": item.config_hash, "weights": weights, "attempts": outcome.attempts,
             "compute": {**outcome.compute, "seconds": round(outcome.seconds, 6)} if outcome.files is not None
             else {}, "files": {}, "status": "failed", "error": outcome.error}
    if outcome.files is not None:
        for write_try in range(retries + 1):
            try:
                entry["files"] = folder.write_item(item.id, outcome.files)
                entry.update(status="done", error=None)
                break
            except OSError as err:
                entry["error"] = f"cannot write the item's files: {err.strerror or err}" + (
                    f" ({err.filename})" if getattr(err, "filename", None) else "")
                entry["attempts"] = outcome.attempts + write_try  # a rewrite of the same bytes is a retry
    if entry["status"] == "done":
        summary.done += 1
        for name in COMPUTE_FIELDS:
            summary.compute[name] += entry["compute"].get(name, 0)
    else:
        folder.remove_item(item.id)  # a failed item leaves no half folder
        summary.failed += 1
        summary.failures.append({"id": item.id, "error": entry["error"]})
    folder.append(entry)
