"""Continuous batching across requests: one running decode batch that requests join and leave.

Paper: Yao et al. 2023, *Flover: A Temporal Fusion Framework for Efficient Autoregressive Model
Parallel Inference* — requests join the running batch as others finish, instead of waiting for a
batch to drain.

Rule: a `RunningBatch` keeps one decode batch for one model. A request (one plain-decoding call:
its prompts, sampling settings, generators, stop rule and token budget) waits until the next step;
then its prompt is prefilled alone — once for every request waiting with the same prompt, and kept
for later requests with it (`PREFILLS_KEPT`) — its rows draw their first tokens, and the rows still
running join the batch (`JoinableCache.join`: right-aligned, the shorter side's left padding hidden).
Every step feeds every running row its last token in one forward; each request's rows then sample
from their own logits with the request's settings and generators, in row order, exactly as plain
decoding does, so a row's draws are the ones it makes alone. A row leaves the batch the step it
finishes; a request returns its `Decoded` when its last row finishes. Leading padding no row attends
to any more is dropped. The only difference from decoding alone is float rounding: a batched forward
over a padded cache sums in another order (on a CPU, about 1e-6 of a logit), which changes a sampled
token only when a draw lands that close to a boundary of the distribution.

Length buckets: a request joins a running batch only if its prompt length and the batch's prompts
are within `LENGTH_RATIO` of each other; otherwise it waits for the batch to drain (callers hand
requests over shortest first, so that happens once per bucket). Paper: *Training and Inference
Efficiency of Encoder-Decoder Speech Models* (batching by length to cut padding).

Requests come from code that calls `plain` inside `RunningBatch.map`: each task (a job item, a demo
request) runs in its own thread, but only one thread runs at any time — a task runs until it waits
for a request (or finishes), then the batch steps — so the schedule, and with it every output,
depends only on the tasks and their order, never on timing, and the model, tokenizers and verifiers
are never used by two threads at once. Work that is not a plain-decoding call on the batch's model
(a verifier, a step search's own cache, a diffusion model) runs inside its task's turn, as alone.

Compute: a request counts its own prefill (split evenly among the requests of one step that share
it; a kept prefill reused later costs nothing), one model call per step it had rows in, and the
wall time of each step split evenly among the step's rows. `own_time_offset` lets a task turn its
wall clock into its own share (wall time − time spent waiting + its share of fused steps).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ponder.errors import ConfigError, check_int
from ponder.kernels.sampling import SamplingParams, sample_from_logits
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import JoinableCache, device_of
from ponder.search.decoding.outputs import RowOutputs, StopFn, prefill_shared

MAX_ROWS = 64  # rows a running batch holds before waiting requests queue (a bigger request runs alone in it)
LENGTH_RATIO = 1.5  # length buckets: prompts batched together differ by at most this factor (+ BUCKET_SLACK)
BUCKET_SLACK = 8  # tokens: prompts this much apart always share a bucket, however short
PREFILLS_KEPT = 16  # prompts whose prefill (one row's keys and values, and its logits) the batch keeps

_DONE = object()  # `RunningBatch._drive`'s "no more tasks"
_local = threading.local()  # .task: the `_Task` this thread runs inside `RunningBatch.map`


def current_batch() -> RunningBatch | None:
    """The running batch this thread's task decodes through, or None outside `RunningBatch.map`."""
    task = getattr(_local, "task", None)
    return None if task is None else task.batch


def own_time_offset() -> float:
    """Seconds to add to this thread's wall clock to get its own share of time: its share of fused
    steps minus the time it spent waiting for them (0 outside `RunningBatch.map`)."""
    task = getattr(_local, "task", None)
    return 0.0 if task is None else task.share - task.waited


@dataclass
class FusionStats:
    """What a running batch did: steps, rows per step, padding, prefills."""

    steps: int = 0  # batched forwards
    row_steps: int = 0  # rows fed, summed over steps
    kv_positions: int = 0  # key / value positions attended over, summed over steps and rows
    padding_positions: int = 0  # of those, left padding (hidden)
    requests: int = 0
    prefills: int = 0  # prompt prefills run
    shared_prefills: int = 0  # requests that reused another's prefill
    alone: int = 0  # requests that fell back to decoding alone (a failed batched forward)
    bucket_waits: int = 0  # steps at which the next request waited for the batch to drain (another length bucket)

    @property
    def rows_per_step(self) -> float:
        return self.row_steps / self.steps if self.steps else 0.0

    @property
    def padding_fraction(self) -> float:
        return self.padding_positions / self.kv_positions if self.kv_positions else 0.0

    def add(self, other: FusionStats) -> None:
        """Add `other`'s counts to these (several batches, several workers)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def from_dict(cls, data: dict) -> FusionStats:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rows_per_step": round(self.rows_per_step, 2),
                "padding_fraction": round(self.padding_fraction, 4)}


class _Task:
    """One task of `RunningBatch.map`: its thread, its turn, its clock."""

    def __init__(self, batch: RunningBatch, index: int, fn: Callable[[], Any]):
        self.batch, self.index, self.fn = batch, index, fn
        self.go = threading.Event()  # the scheduler gives this task its turn
        self.back = threading.Event()  # the task hands the turn back (waiting on a request, or done)
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.waited = 0.0  # seconds spent waiting for the batch
        self.share = 0.0  # seconds of fused work charged to this task
        self.thread = threading.Thread(target=self._main, name=f"ponder-fused-{index}", daemon=True)

    def _main(self) -> None:
        self.go.wait()
        self.go.clear()
        _local.task = self
        try:
            self.value = self.fn()
        except BaseException as err:  # handed to the caller of map, which decides
            self.error = err
        finally:
            _local.task = None
            self.done = True
            self.back.set()

    def resume(self) -> None:
        """Give this task the turn and wait until it hands it back."""
        self.back.clear()
        if not self.thread.is_alive() and not self.done:
            self.thread.start()
        self.go.set()
        self.back.wait()

    def wait_for_turn(self) -> None:
        """From the task's thread: hand the turn back and block until the scheduler resumes it."""
        start = time.perf_counter()
        self.back.set()
        self.go.wait()
        self.go.clear()
        self.waited += time.perf_counter() - start
        if self.batch._closed:
            raise _Cancelled()


class _Cancelled(BaseException):
    """The map was closed while this task waited: unwind its thread."""


@dataclass
class _Request:
    task: _Task
    prompt_ids: list[list[int]]
    sampling: SamplingParams
    generators: list[torch.Generator]
    states: list[torch.Tensor]  # the generators' states at submit, to decode alone from scratch
    out: RowOutputs
    rows: list[int] = field(default_factory=list)  # this request's rows now in the running batch
    alone: bool = False  # decode by plain decoding in the task's own turn

    @property
    def size(self) -> int:
        return len(self.prompt_ids)

    @property
    def compute(self) -> Compute:
        return self.out.compute

    @property
    def shared_prompt(self) -> tuple[int, ...] | None:
        """The prompt every row of the request shares (what one prefill serves), else None."""
        first = self.prompt_ids[0]
        return tuple(first) if all(p == first for p in self.prompt_ids) else None


class RunningBatch:
    """One running decode batch for one model (see the module docstring for the rule).

    Args:
        model: the `SequenceModel` whose plain decoding fuses; its `new_cache()` must be a
            `JoinableCache` (else every request decodes alone, as today). None: whichever such model
            decodes while the batch holds no rows (a server whose users switch models).
        max_rows: rows the batch holds before waiting requests queue (>= 1).
        length_ratio: length buckets: a request joins a non-empty batch only while the longest prompt
            among its rows and the batch's is at most this many times the shortest (plus
            `BUCKET_SLACK` tokens); otherwise it, and the requests behind it, wait for the batch to
            drain. A batch of short prompts then never pads them to a long one's length. None: no
            buckets (join whenever rows are free).
    """

    def __init__(self, model, *, max_rows: int = MAX_ROWS, length_ratio: float | None = LENGTH_RATIO):
        check_int("max_rows", max_rows)
        if length_ratio is not None and (isinstance(length_ratio, bool) or not isinstance(length_ratio, (int, float))
                                         or not length_ratio >= 1.0):
            raise ConfigError(f"length_ratio must be a number >= 1 (or None: no length buckets), got {length_ratio!r}")
        self.model = model
        self.max_rows = max_rows
        self.length_ratio = length_ratio
        self.follows = model is None  # no model given: the batch takes whichever model decodes while it is idle
        self.joinable = self.follows or _joinable(model)
        self.stats = FusionStats()
        self._pending: deque[_Request] = deque()
        self._running: list[tuple[_Request, int]] = []  # batch row -> (request, its row)
        self._last: list[int] = []  # batch row -> the token to feed next
        self._cache = None
        self._kept: OrderedDict[tuple[int, ...], tuple[Any, torch.Tensor]] = OrderedDict()
        self._closed = False

    # ---- from a task's thread --------------------------------------------------------------------

    def accepts(self, model, generators) -> bool:
        """Whether a plain-decoding call of `model` with `generators` can join this batch (a batch
        made without a model takes the caller's model whenever it holds no rows)."""
        if generators is None or self._closed:
            return False
        if self.follows and model is not self.model and not self._running and not self._pending and _joinable(model):
            self.model, self._kept = model, OrderedDict()
        return self.joinable and model is self.model

    def submit(self, model, prompt_ids: Sequence[Sequence[int]], *, sampling: SamplingParams, max_new_tokens: int,
               generators: list[torch.Generator] | None, stop: StopFn | None,
               stream: StreamCallback | None) -> Decoded | None:
        """Decode `prompt_ids` as rows of the running batch; None when the caller must decode alone
        (a model or call this batch does not take, or a batched forward that failed)."""
        task = getattr(_local, "task", None)
        if task is None or task.batch is not self or not self.accepts(model, generators):
            return None
        if len(generators) != len(prompt_ids):
            raise ValueError(f"got {len(generators)} generators for {len(prompt_ids)} prompts")
        out = RowOutputs(len(prompt_ids), eos=model.eos_token_ids, max_new_tokens=max_new_tokens, stop=stop,
                         stream=stream, compute=Compute())
        if not out.active:
            return out.decoded()
        request = _Request(task, [list(p) for p in prompt_ids], sampling, list(generators),
                           [g.get_state() for g in generators], out)
        self._pending.append(request)
        self.stats.requests += 1
        task.wait_for_turn()
        if request.alone:
            for generator, state in zip(request.generators, request.states):
                generator.set_state(state)
            return None
        task.share += request.compute.seconds
        return out.decoded()

    # ---- the scheduler ---------------------------------------------------------------------------

    def map(self, tasks: Iterable[Callable[[], Any]], *, max_live: int | None = None) -> Iterator[tuple[int, Any]]:
        """Run `tasks` (zero-argument callables) as fused tasks; yield ``(index, value)`` for each as
        it finishes (a task's exception is re-raised to the caller: catch inside a task to isolate
        it). At most `max_live` tasks run at once (default `max_rows`); new ones are taken from
        `tasks` (lazily) while the batch has room."""
        source = iter(enumerate(tasks))
        return self._drive(lambda block: next(source, _DONE), max_live or self.max_rows)

    def _drive(self, take: Callable[[bool], Any], max_live: int) -> Iterator[tuple[int, Any]]:
        """The scheduler loop. ``take(block)`` gives the next ``(index, task)``, None when none is
        waiting (asked with block=False only while tasks are live), or `_DONE` when there are no more."""
        live: list[_Task] = []
        exhausted = False
        try:
            while True:
                while not exhausted and len(live) < max_live and (not live or self._rows_wanted() < self.max_rows):
                    got = take(not live)
                    if got is _DONE:
                        exhausted = True
                    if got is None or got is _DONE:
                        break
                    task = _Task(self, *got)
                    task.resume()
                    if task.done:
                        yield self._finish(task)
                    else:
                        live.append(task)
                if not live:
                    if exhausted:
                        return
                    continue
                for request in self._step():
                    request.task.resume()
                    if request.task.done:
                        live.remove(request.task)
                        yield self._finish(request.task)
        finally:
            self._closed = True
            for task in live:
                task.go.set()
            self._pending.clear()
            self._running, self._last, self._cache = [], [], None

    @staticmethod
    def _finish(task: _Task) -> tuple[int, Any]:
        task.thread.join()
        if task.error is not None:
            raise task.error
        return task.index, task.value

    def _running_requests(self) -> list[_Request]:
        """The requests with rows in the batch, each once, in row order."""
        return list({id(r): r for r, _ in self._running}.values())

    def _rows_wanted(self) -> int:
        return len(self._running) + sum(request.size for request in self._pending)

    @torch.inference_mode()
    def _step(self) -> list[_Request]:
        """Admit waiting requests, then feed every running row one token. Returns the requests that
        finished (or must decode alone), in a fixed order."""
        finished: list[_Request] = []
        try:
            finished += self._admit()
            if self._running:
                finished += self._decode()
        except Exception:  # a failed batched forward: every request in it decodes alone, so a bad one fails alone
            running = self._running_requests()
            for request in running:
                request.alone = True
            finished += running
            self.stats.alone += len(running)
            self._running, self._last, self._cache = [], [], None
        return finished

    def _admit(self) -> list[_Request]:
        """Prefill and join the waiting requests that fit; return those already finished (every row
        ended on its first token) or failed alone."""
        admitted: list[_Request] = []
        rows = len(self._running)
        prompts = [len(request.prompt_ids[row]) for request, row in self._running]
        lo, hi = (min(prompts), max(prompts)) if prompts else (None, None)
        while self._pending:
            request = self._pending[0]
            length = max(len(p) for p in request.prompt_ids)
            if rows and rows + request.size > self.max_rows:
                break
            if rows and not self._same_bucket(min(lo, length), max(hi, length)):
                self.stats.bucket_waits += 1
                break
            self._pending.popleft()
            admitted.append(request)
            rows += request.size
            lo, hi = (length, length) if lo is None else (min(lo, length), max(hi, length))
        users: dict[tuple[int, ...], list[_Request]] = {}
        for request in admitted:
            if request.shared_prompt is not None:
                users.setdefault(request.shared_prompt, []).append(request)
        finished: list[_Request] = []
        for request in admitted:
            try:
                self._join(request, users, finished)
            except Exception:  # a prompt the model rejects: its request decodes alone (and fails alone)
                request.alone = True
                self.stats.alone += 1
                finished.append(request)
        return finished

    def _join(self, request: _Request, users: dict, finished: list[_Request]) -> None:
        """Prefill one admitted request, draw its rows' first tokens, join the rows still running."""
        cache, index, logits = self._prefill(request, users)
        request.compute.model_calls += 1
        start = time.perf_counter()
        first = sample_from_logits(logits, request.sampling, request.generators)  # [B]
        logp = torch.log_softmax(logits.float(), dim=-1).gather(1, first[:, None].to(logits.device))[:, 0]
        for row, (token, lp) in enumerate(zip(first.tolist(), logp.tolist())):
            request.out.emit(row, token, lp)
        keep = sorted(request.out.active)
        if keep:
            if self._cache is None:
                self._cache = self.model.new_cache()
            self._cache.join(cache, index[keep])
            base = len(self._running)
            request.rows = list(range(base, base + len(keep)))
            self._running += [(request, row) for row in keep]
            self._last += [int(first[row]) for row in keep]
        else:
            finished.append(request)
        request.compute.seconds += time.perf_counter() - start

    def _same_bucket(self, shortest: int, longest: int) -> bool:
        """Whether prompts of these lengths share a length bucket (always, without `length_ratio`)."""
        return self.length_ratio is None or longest <= self.length_ratio * shortest + BUCKET_SLACK

    def _prefill(self, request: _Request, users: dict) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """(a prefilled cache, which of its rows each of the request's rows is [B], the next-token
        logits [B, V]), as plain decoding's prefill leaves them. A prompt shared by every row is
        prefilled once (one row) for all requests of this step with it, and kept for later ones."""
        key = request.shared_prompt
        start = time.perf_counter()
        if key is None:
            cache = self.model.new_cache()
            logits = prefill_shared(self.model, request.prompt_ids, cache)  # [B, V]
            self.stats.prefills += 1
            request.compute.seconds += time.perf_counter() - start
            return cache, torch.arange(request.size), logits
        if key in self._kept:
            self._kept.move_to_end(key)
            self.stats.shared_prefills += 1
        else:
            cache = self.model.new_cache()
            logits = self.model.prefill([list(key)], cache)  # [1, V]
            self.stats.prefills += 1
            self._kept[key] = (cache, logits)
            while len(self._kept) > PREFILLS_KEPT:
                self._kept.popitem(last=False)
            sharers = users.get(key, [request])
            for user in sharers:  # split evenly among this step's requests with the prompt
                user.compute.seconds += (time.perf_counter() - start) / len(sharers)
        cache, logits = self._kept[key]
        return cache, torch.zeros(request.size, dtype=torch.long), logits.expand(request.size, -1).contiguous()

    def _decode(self) -> list[_Request]:
        """One forward of every running row; sample per request; retire finished rows."""
        start = time.perf_counter()
        tokens = torch.tensor(self._last, dtype=torch.long, device=device_of(self.model))[:, None]  # [B, 1]
        logits = self.model.forward(tokens, self._cache)[:, -1]  # [B, V]
        mask = self._cache.attention_mask
        rows, length = logits.shape[0], self._cache.length
        self.stats.steps += 1
        self.stats.row_steps += rows
        self.stats.kv_positions += rows * length
        self.stats.padding_positions += 0 if mask is None else int((mask == 0).sum())
        requests = self._running_requests()
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
        share = {id(request): len(request.rows) for request in requests}
        for request in requests:
            own = [self._running[b][1] for b in request.rows]
            picks = sample_from_logits(logits[request.rows], request.sampling,
                                       [request.generators[row] for row in own])  # [R]
            for b, row, token in zip(request.rows, own, picks.tolist()):
                request.out.emit(row, token, float(logp[b, token]))
                self._last[b] = token
            request.compute.model_calls += 1
        keep = [b for b, (request, row) in enumerate(self._running) if row in request.out.active]
        if len(keep) != rows:
            self._running = [self._running[b] for b in keep]
            self._last = [self._last[b] for b in keep]
            if keep:
                self._cache.reorder(torch.tensor(keep, dtype=torch.long))
                lead = self._cache.leading_padding()
                if lead:
                    self._cache.drop_leading(lead)
            else:
                self._cache = None
            for request in requests:
                request.rows = []
            for b, (request, _) in enumerate(self._running):
                request.rows.append(b)
        seconds = time.perf_counter() - start
        for request in requests:  # the step's time, split evenly among its rows
            request.compute.seconds += seconds * share[id(request)] / rows
        return [request for request in requests if not request.out.active]


def _joinable(model) -> bool:
    return isinstance(model, SequenceModel) and isinstance(model.new_cache(), JoinableCache)


class BatchServer:
    """A running batch behind a thread, for callers on many threads (a server's concurrent users).

    `run(fn)` hands `fn` to the server's thread as a task of one `RunningBatch` (made without a
    model, so it follows the model users decode with) and blocks until it finishes; its value or
    its exception comes back to the caller. Tasks take turns as in `RunningBatch.map`, so `fn` may
    use models and caches shared with other callers' tasks without a lock; plain decoding of
    concurrent callers fuses into one batch. `close()` stops the thread after the tasks it holds.
    """

    def __init__(self, *, max_rows: int = MAX_ROWS, max_live: int | None = None):
        import queue

        self.batch = RunningBatch(None, max_rows=max_rows)
        self.max_live = max_live or max_rows
        self._inbox: queue.Queue = queue.Queue()
        self._count = 0
        self._thread = threading.Thread(target=self._loop, name="ponder-batch-server", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` as a task of the batch; its value (or raise its exception)."""
        from concurrent.futures import Future

        if getattr(_local, "task", None) is not None:  # already a task of a batch: run it in this turn
            return fn()
        if not self._thread.is_alive():
            raise RuntimeError("this BatchServer is closed")
        future: Future = Future()
        self._inbox.put((future, fn))
        return future.result()

    def close(self) -> None:
        self._inbox.put(_DONE)
        self._thread.join()

    def _take(self, block: bool):
        import queue

        try:
            got = self._inbox.get(block=block)
        except queue.Empty:
            return None
        if got is _DONE:
            return _DONE
        future, fn = got
        self._count += 1

        def task():
            try:
                future.set_result(fn())
            except BaseException as err:  # the caller gets it
                future.set_exception(err)

        return self._count, task

    def _loop(self) -> None:
        for _ in self.batch._drive(self._take, self.max_live):
            pass


__all__ = ["MAX_ROWS", "BatchServer", "FusionStats", "RunningBatch", "current_batch", "own_time_offset"]
