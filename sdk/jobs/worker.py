"""What one worker does: hold a model loaded across items and render items into file bytes.

A worker (the local process, or one Ray actor) keeps the model of the items it is rendering loaded,
with the verifiers and draft models those items name, and drops them when the items move on to the
next model (items arrive grouped by model, so each model loads once per worker). A model that fails
to load is remembered, so the rest of its items fail at once with the same error.

`Worker.render_fused` renders a run of items through one running decode batch per model
(`ponder.search.decoding.continuous`, continuous batching): every plain-decoding call of the items'
strategies joins it, rows of several items decode together, and each item is assembled, and handed
back, the moment its last row finishes. Items of one model are taken shortest prompt first (length
buckets), so rows of similar length share the batch. Everything else about an item — its retries,
its failure alone, its files — is what `render` does; its compute is its own share of the fused work.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ponder.errors import ModelLoadError, PonderError
from ponder.search.decoding.continuous import LENGTH_RATIO, MAX_ROWS, FusionStats, RunningBatch, own_time_offset


def _clock() -> float:
    """This task's own seconds: the wall clock, less time spent waiting on a running batch, plus its
    share of the batch's steps (plain wall time outside one)."""
    return time.perf_counter() + own_time_offset()


@dataclass
class Outcome:
    """What rendering one item gave: its files, or the error that stopped it."""

    id: str
    config_hash: str
    files: dict[str, bytes] | None = None  # file name -> bytes, when it rendered
    compute: dict = field(default_factory=dict)
    error: str | None = None  # one line, when it failed
    attempts: int = 1
    seconds: float = 0.0
    load_seconds: float = 0.0  # of `seconds`, the time spent loading models, verifiers and drafts


def model_key(modality: str, spec: str, load_options: dict | None = None) -> tuple[str, ...]:
    """What a worker holds one model for: (modality, spec), and the load options when there are any."""
    if not load_options:
        return (modality, spec)
    return (modality, spec, json.dumps(load_options, sort_keys=True))


class ModelCache:
    """The models, verifiers and drafts a worker has loaded, for one (modality, model) at a time."""

    def __init__(self, load=None, load_verifier=None):
        from ponder import api

        self._load = load or api.load
        self._load_verifier = load_verifier or api.load_verifier
        self.key: tuple[str, ...] | None = None
        self.model: Any = None
        self.error: PonderError | None = None
        self.verifiers: dict[str, Any] = {}
        self.drafts: dict[str, Any] = {}
        self.loads = 0  # models loaded so far (tests pin "once per worker")
        self.load_seconds = 0.0  # time spent loading, all together (the cost model leaves it out)
        self._mine = threading.local()  # .seconds: the loading this thread did (fused items run in threads)

    def own_load_seconds(self) -> float:
        """Seconds of loading done by this thread (an item's own, when items run as fused tasks)."""
        return getattr(self._mine, "seconds", 0.0)

    @contextmanager
    def _loading(self) -> Iterator[None]:
        """Count the body's time as loading: the worker's, and this thread's own."""
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.load_seconds += spent
            self._mine.seconds = self.own_load_seconds() + spent

    def model_for(self, modality: str, spec: str, load_options: dict | None = None):
        """The loaded model for (modality, spec, load options), loading it (once) if the worker holds
        another."""
        load_options = dict(load_options or {})
        key = model_key(modality, spec, load_options)
        if key != self.key:
            self.key, self.model, self.error = key, None, None
            self.verifiers.clear()
            self.drafts.clear()
            self.loads += 1
            with self._loading():
                try:
                    self.model = self._load(modality, spec, **load_options)
                except PonderError as err:
                    self.error = err
                except Exception as err:  # a broken folder fails in transformers with many error types
                    self.error = ModelLoadError(f"cannot load {modality} model {spec!r}: {type(err).__name__}: {err}")
        if self.error is not None:
            raise self.error
        return self.model

    def verifier_for(self, modality: str, spec: str, model):
        if spec not in self.verifiers:
            with self._loading():
                self.verifiers[spec] = self._load_verifier(modality, spec, model=model)
        return self.verifiers[spec]

    def draft_for(self, modality: str, spec: str):
        if spec not in self.drafts:
            with self._loading():
                self.drafts[spec] = self._load(modality, spec)
        return self.drafts[spec]

    def run(self, request):
        """The `Result` of a validated `ponder.request.Request`, with its model, verifier and draft
        taken from (or loaded into) this cache."""
        import ponder

        model = self.model_for(request.modality, request.model, request.load_options)
        kwargs = request.generate_kwargs()
        if request.verifier is not None:
            kwargs["verifier"] = self.verifier_for(request.modality, request.verifier, model)
        if request.draft is not None:
            kwargs["draft"] = self.draft_for(request.modality, request.draft)
        before = own_time_offset()
        result = ponder.generate(model, request.prompt, **kwargs)
        result.compute.seconds += own_time_offset() - before  # its own share of fused work, not its wait
        return result


def quiet_loaders() -> None:
    """No weight-loading progress bars from transformers over the job's own progress bar."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    name = "" if isinstance(err, PonderError) else f"{type(err).__name__}: "
    return (name + text)[:500] or type(err).__name__


class Worker:
    """Renders items one by one, keeping models loaded between them."""

    def __init__(self, cache: ModelCache | None = None, threads: int | None = None):
        self._threads_before = None
        if threads:
            import torch

            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        quiet_loaders()
        self.cache = cache or ModelCache()
        self.fusion = FusionStats()  # what render_fused's running batches did, all together

    def close(self) -> None:
        """Give back the torch thread count this worker changed (the local worker shares its process)."""
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def generate(self, spec: dict):
        """The `Result` of one item spec (a dict of `Item` fields), run as its `Request`."""
        from ponder.request import request_from_item

        return self.cache.run(request_from_item(spec))

    def render(self, spec: dict, config_hash: str, retries: int = 0) -> Outcome:
        """Render one item into its files, retrying unexpected errors up to `retries` times.

        A `PonderError` (a model that does not load, a prompt the model rejects) is the same on
        every try, so it fails the item at once; anything else (an out-of-memory, a flaky file
        system) is tried again.
        """
        from ponder.jobs.outputs import result_files

        start = _clock()
        loaded_before = self.cache.own_load_seconds()
        attempts = 0
        while True:
            attempts += 1
            try:
                result = self.generate(spec)
                files = result_files(spec, result)
                return Outcome(spec["id"], config_hash, files=files, compute=result.compute.to_dict(),
                               attempts=attempts, seconds=_clock() - start,
                               load_seconds=self.cache.own_load_seconds() - loaded_before)
            except PonderError as err:
                return Outcome(spec["id"], config_hash, error=_one_line(err), attempts=attempts,
                               seconds=_clock() - start)
            except Exception as err:
                if attempts > retries:
                    return Outcome(spec["id"], config_hash, error=_one_line(err) + _where(err), attempts=attempts,
                                   seconds=_clock() - start)

    def render_batch(self, batch: list[tuple[dict, str]], retries: int = 0) -> list[Outcome]:
        return [self.render(spec, config_hash, retries) for spec, config_hash in batch]

    def render_fused(self, batch: list[tuple[dict, str]], retries: int = 0, *, max_rows: int = MAX_ROWS,
                     buckets: bool = True) -> Iterator[Outcome]:
        """Render `batch` (item spec, config hash) with one running decode batch per model; yield each
        `Outcome` as its item finishes (not in `batch` order). Consecutive items of one model (and
        load options) share a batch; with `buckets`, shortest prompt first and in length buckets
        (`RunningBatch`'s `length_ratio`), else in `batch` order, joining whenever rows are free."""
        for group in _model_runs(batch):
            first = group[0][0]
            try:
                request = _request(first)
                model = self.cache.model_for(request.modality, request.model, request.load_options)
            except PonderError:  # a model that does not load, a bad spec: each item fails alone, as today
                for spec, config_hash in group:
                    yield self.render(spec, config_hash, retries)
                continue
            running = RunningBatch(model, max_rows=max_rows, length_ratio=LENGTH_RATIO if buckets else None)
            if buckets:
                group = sorted(group, key=lambda pair: _prompt_length(model, pair[0]))
            tasks = [lambda spec=spec, config_hash=config_hash: self.render(spec, config_hash, retries)
                     for spec, config_hash in group]
            try:
                for _, outcome in running.map(tasks):
                    yield outcome
            finally:
                self.fusion.add(running.stats)


def _request(spec: dict):
    from ponder.request import request_from_item

    return request_from_item(spec)


def _model_key(spec: dict) -> tuple:
    try:
        request = _request(spec)
    except PonderError:
        return ("invalid", spec.get("id"))
    return model_key(request.modality, request.model, request.load_options)


def _model_runs(batch: list[tuple[dict, str]]) -> list[list[tuple[dict, str]]]:
    """`batch` cut into runs of consecutive items with one model and load options."""
    runs: list[list[tuple[dict, str]]] = []
    last = None
    for pair in batch:
        key = _model_key(pair[0])
        if not runs or key != last:
            runs.append([])
        runs[-1].append(pair)
        last = key
    return runs


def _prompt_length(model, spec: dict) -> int:
    """The item's prompt length in the model's tokens (its length bucket); 0 when it does not encode."""
    try:
        return len(model.encode(spec["prompt"]))
    except Exception:  # a prompt the model rejects fails in its own task, not here
        return 0


def _where(err: BaseException) -> str:
    """` (at file:line)` of the innermost frame, so an unexpected failure can be found."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno})"
