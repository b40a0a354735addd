"""The Ray backend: one model-holding actor per worker; results stream back to the driver.

Each actor is a `Worker` (the same code the local backend runs), reserving `num_cpus` and
`num_gpus`. Items go out in model order, a few at a time per actor, so an actor keeps its model
loaded across consecutive items; the driver writes every file and the manifest as results arrive.
With fusion on (the default), each call hands an actor a chunk of items (up to `max_rows`, fewer
when that spreads the job over every actor) that it renders through its own running decode batch
(the same continuous batcher as the local backend); the chunk's outcomes come back together.
Needs the ``ray`` extra (``pip install 'ponder[ray]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ponder.errors import ConfigError
from ponder.jobs.spec import Item
from ponder.jobs.worker import Outcome, Worker
from ponder.search.decoding.continuous import MAX_ROWS, FusionStats

IN_FLIGHT_PER_ACTOR = 2  # one rendering, one queued: the actor never waits on the driver


class _RenderActor:
    """Ray actor body: a `Worker` that lives as long as the job."""

    def __init__(self, threads: int | None):
        self.worker = Worker(threads=threads)

    def render(self, spec: dict, config_hash: str, retries: int) -> Outcome:
        return self.worker.render(spec, config_hash, retries)

    def render_fused(self, pairs: list[tuple[dict, str]], retries: int, max_rows: int,
                     buckets: bool) -> tuple[list[Outcome], dict]:
        """A chunk of items through this actor's running batch: their outcomes and the batch's stats."""
        self.worker.fusion = FusionStats()
        outcomes = list(self.worker.render_fused(pairs, retries, max_rows=max_rows, buckets=buckets))
        return outcomes, self.worker.fusion.to_dict()

    def loads(self) -> int:
        return self.worker.cache.loads

    def origin(self) -> str:
        """Where this actor's ponder was imported from (a shipped copy lives in Ray's runtime folder)."""
        import ponder

        return str(ponder.__file__)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'ponder[ray]'") from None
    return ray


def ray_outcomes(items: list[Item], retries: int, *, address: str | None = None, workers: int | None = None,
                 num_cpus: float = 1.0, num_gpus: float = 0.0, threads: int | None = None, fuse: bool = False,
                 max_rows: int = MAX_ROWS, buckets: bool = True, ship: str = "auto",
                 fusion: FusionStats | None = None) -> Iterator[Outcome]:
    """Render `items` on Ray actors; yield each `Outcome` as it completes (with `fuse`, as its chunk
    of up to `max_rows` items completes; `fusion` collects the actors' running-batch stats).

    `ship` ("auto", "code", "all", "none"; `ponder.jobs.ray_env`) says what the actors' runtime
    environment brings to the nodes: "auto" ships ponder, the job's zoo models and ponder's
    requirements to a cluster given by `address`, and nothing to a Ray on this machine.

    Uses the Ray runtime this process already joined, else joins `address`, else starts a local
    one (stopped again at the end).
    """
    import tempfile

    from ponder.jobs.ray_env import check_can_ship, runtime_env, ship_mode

    mode = ship_mode(ship, address)
    ray = import_ray()
    if not items:
        return
    started = False
    actors = []
    scratch = tempfile.TemporaryDirectory(prefix="ponder-ray-ship-")
    try:
        check_can_ship(mode, ship, ray)
        if not ray.is_initialized():
            # Ray uploads local files only for a job's own runtime environment, given to ray.init
            env = runtime_env(items, mode, Path(scratch.name))
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                         **({"runtime_env": env} if env is not None else {}))
            except ConnectionError as err:
                raise ConfigError(f"cannot reach a Ray cluster at {address!r}: {err}") from None
            started = True
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        count = workers or max(1, int(cluster_cpus // num_cpus))
        count = min(count, len(items))
        actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_RenderActor)
        threads = threads or max(1, int(num_cpus))
        actors = [actor_cls.remote(threads) for _ in range(count)]
        queue = list(reversed(items))  # pop() hands out items in model order
        pending: dict = {}  # object ref -> (actor slot, actor, its items)
        # items a call hands an actor: fused, enough for a full batch, but spread so every actor gets work
        chunk = max(1, min(max_rows, -(-len(items) // (count * IN_FLIGHT_PER_ACTOR)))) if fuse else 1

        def submit(slot: int) -> None:
            taken = [queue.pop() for _ in range(min(chunk, len(queue)))]
            actor = actors[slot]
            if fuse:
                ref = actor.render_fused.remote([(item.spec(), item.config_hash) for item in taken], retries, max_rows,
                                                buckets)
            else:
                ref = actor.render.remote(taken[0].spec(), taken[0].config_hash, retries)
            pending[ref] = (slot, actor, taken)

        for _ in range(IN_FLIGHT_PER_ACTOR):
            for slot in range(len(actors)):
                if queue:
                    submit(slot)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            slot, actor, taken = pending.pop(ready[0])
            try:
                outcomes = ray.get(ready[0])
                if fuse:
                    outcomes, stats = outcomes
                    if fusion is not None:
                        fusion.add(FusionStats.from_dict(stats))
                else:
                    outcomes = [outcomes]
            except ray.exceptions.RayError as err:  # the actor died (out of memory, a crash in native code)
                outcomes = [Outcome(item.id, item.config_hash, error=f"Ray worker failed: {type(err).__name__}")
                            for item in taken]
                if isinstance(err, ray.exceptions.RayActorError) and actors[slot] is actor:
                    actors[slot] = actor_cls.remote(threads)
            if queue:
                submit(slot)
            yield from outcomes
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
        scratch.cleanup()
