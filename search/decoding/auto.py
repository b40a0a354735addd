"""`--decoder auto`: run the fastest lossless decoder measured on the nearest workload.

The acceleration-selection idea of meta-learning for algorithm selection (choose a method for a new
task from the measured performance of methods on the most similar past tasks; e.g. Brazdil et al.,
*Metalearning: Applications to Automated Machine Learning and Data Mining*). Rule: a speed history
(JSON lines, one row per measured decoder on one workload, written by `ponder bench speculative`)
holds each decoder's speedup over plain decoding measured in the same run. A workload's features
are (model, draft, batch size, temperature bucket, prompt kind). Rows of another model are never
used, nor rows whose decoder needs a draft other than the one given; among the rest, the rows at
the nearest workload (distance: |log2 batch − log2 batch'| + |bucket − bucket'| + 1 for another
prompt kind, ½ when a kind is unknown) vote, and the lossless decoder with the highest speedup (its
mean over tied nearest workloads) wins — plain when none beats 1 or when there is no history (the
choice says which and why).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import display_name
from ponder.search.decoding.outputs import StopFn

HISTORY_ENV = "PONDER_HOME"  # the history lives at $PONDER_HOME/speed.jsonl (default ~/.cache/ponder)
HISTORY_FILE = "speed.jsonl"


def history_path(folder: str | os.PathLike | None = None) -> Path:
    """Where the speed history is: `folder` (a folder or a .jsonl file), else $PONDER_HOME, else ~/.cache/ponder."""
    if folder is not None:
        path = Path(folder).expanduser()
        return path if path.suffix == ".jsonl" else path / HISTORY_FILE
    home = os.environ.get(HISTORY_ENV)
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "ponder") / HISTORY_FILE


def temperature_bucket(temperature: float) -> int:
    """0: greedy; 1: T in (0, 0.8]; 2: T > 0.8."""
    return 0 if temperature <= 0 else 1 if temperature <= 0.8 else 2


@dataclass(frozen=True)
class Workload:
    """The features a speed measurement is filed under."""

    model: str
    draft: str | None
    batch: int
    temperature: float
    prompt_kind: str | None = None

    def distance(self, other: Workload) -> float:
        """How far two workloads of the same model are (see the module docstring)."""
        d = abs(math.log2(max(1, self.batch)) - math.log2(max(1, other.batch)))
        d += abs(temperature_bucket(self.temperature) - temperature_bucket(other.temperature))
        if self.prompt_kind is None or other.prompt_kind is None:
            d += 0.5 if self.prompt_kind != other.prompt_kind else 0.0
        elif self.prompt_kind != other.prompt_kind:
            d += 1.0
        return d


def read_history(path: Path) -> list[dict]:
    """The history's rows (a missing file is an empty history; unreadable lines are skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and {"model", "decoder", "batch", "temperature", "speedup_vs_plain"} <= set(row):
            rows.append(row)
    return rows


@dataclass
class Choice:
    """What auto picked, and why (recorded in the result's config)."""

    decoder: str
    options: dict = field(default_factory=dict)
    uses_draft: bool = False
    speedup: float | None = None  # the winner's measured speedup over plain on the nearest workload
    distance: float | None = None
    nearest: dict | None = None  # that workload's features
    history: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def choose(workload: Workload, path: Path, lossy_names: Sequence[str] = ()) -> Choice:
    """The fastest lossless decoder for `workload` from the history at `path`."""
    where = str(path)
    usable = []
    for row in read_history(path):
        if row["model"] != workload.model or row.get("lossy") or row["decoder"] in lossy_names:
            continue
        row_draft = row.get("draft")
        if row_draft is not None and row_draft != workload.draft:
            continue  # that decoder ran with a draft this run does not have
        other = Workload(row["model"], row_draft, int(row["batch"]), float(row["temperature"]), row.get("prompt_kind"))
        usable.append((workload.distance(other), row, other))
    if not usable:
        return Choice("plain", history=where, note=f"no speed history for model {workload.model!r} (with draft "
                      f"{workload.draft!r}) in {where}; ran plain — `ponder bench speculative` records one")
    nearest = min(d for d, _, _ in usable)
    # tied nearest workloads (e.g. an unknown prompt kind): a decoder scores its mean speedup over them
    groups: dict[str, list] = {}
    for d, row, other in usable:
        if d == nearest:
            key = json.dumps([row["decoder"], row.get("draft"), row.get("options") or {}], sort_keys=True)
            groups.setdefault(key, []).append((row, other))
    scored = [(sum(float(r["speedup_vs_plain"]) for r, _ in g) / len(g), g[0]) for g in groups.values()]
    speedup, (best, other) = max(scored, key=lambda item: item[0])
    base = dict(distance=nearest, nearest=asdict(other), history=where)
    if best["decoder"] == "plain" or speedup <= 1.0:
        return Choice("plain", speedup=speedup, note="no lossless decoder beat plain on the nearest workload", **base)
    return Choice(best["decoder"], options=dict(best.get("options") or {}), uses_draft=best.get("draft") is not None,
                  speedup=speedup, note=f"fastest lossless decoder on the nearest workload ({speedup:.2f}x plain)",
                  **base)


def workload_of(model, draft, batch: int, sampling: SamplingParams, prompt_kind: str | None = None) -> Workload:
    """A run's workload features from its model and draft names."""
    draft_name = None if draft is None else str(display_name(draft, draft))
    return Workload(str(display_name(model)), draft_name, batch, float(sampling.temperature), prompt_kind)


def auto(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    history: str | None = None,
    prompt_kind: str | None = None,
    stats: dict | None = None,
) -> Decoded:
    """Decode with the decoder `choose` picks for this workload (lossless only).

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream, draft: as in `plain`.
        history: the speed history folder or .jsonl file (default: $PONDER_HOME or ~/.cache/ponder).
        prompt_kind: optional label of the prompts (e.g. "arith", "copy") matched against the history.
        stats: optional dict; receives "auto" (the `Choice` as a dict) and the chosen decoder's stats.
    """
    from ponder.search.decoding import LOSSY, get_decoder

    if prompt_kind is not None and not isinstance(prompt_kind, str):
        raise ConfigError(f"prompt_kind must be a string label, got {prompt_kind!r}")
    choice = choose(workload_of(model, draft, len(prompt_ids), sampling, prompt_kind), history_path(history),
                    sorted(LOSSY))
    if stats is not None:
        stats["auto"] = choice.to_dict()
    decoder = get_decoder(choice.decoder)
    extra = dict(choice.options)
    if choice.uses_draft:
        extra["draft"] = draft
    if stats is not None and choice.decoder != "plain":
        extra["stats"] = stats
    return decoder(model, prompt_ids, sampling=sampling, max_new_tokens=max_new_tokens, generators=generators,
                   stop=stop, stream=stream, **extra)


__all__ = ["Choice", "HISTORY_ENV", "Workload", "auto", "choose", "history_path", "read_history", "workload_of"]
