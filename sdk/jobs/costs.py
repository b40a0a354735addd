"""A job's expected time from an idealized-runtime cost model fitted on this machine's own items.

Rule (Narayanan et al. 2023, *Cheaply Evaluating Inference Efficiency Metrics for Autoregressive
Transformer APIs*: runtime as a fitted function of prompt and output size on the hardware): the
seconds one item takes are fitted by least squares as

    seconds = a + b * (candidates x prompt characters) + c * (tokens generated)

over the items already rendered of the same (modality, model, strategy, decoder) on this machine
(prompt size in characters: the driver that plans a job holds no tokenizer; seconds without the
time spent loading models). A feature that never varied among the observations is left out of the
fit (its effect cannot be told from the intercept). An item not yet
rendered is predicted with its tokens = candidates x the tokens per candidate seen so far. With
fewer than 3 observations the prediction is their mean seconds per item; with none, nothing is
estimated. Observations are kept (the last 500 per group) in ``$PONDER_HOME/costs.json`` (default
``~/.cache/ponder``), one table per machine, so `ponder render --dry-run` can estimate a job before
it runs, and the progress bar's ETA uses the model while the job runs (refitted after every item).
"""

from __future__ import annotations

import os

from ponder.jobs.spec import Item
from ponder.jobs.state import cpu_name, read_state, write_state

KEEP = 500  # observations kept per group
_FILE = "costs.json"


def machine() -> str:
    """This machine as the cost table's key: CPU model and core count."""
    return f"{cpu_name()} x{os.cpu_count()}"


def group(item: Item) -> str:
    return f"{item.modality}|{item.model}|{item.strategy}|{item.decoder}"


class CostTable:
    """The observations of this machine, by group; `predict` fits each group's model on demand."""

    def __init__(self, observations: dict[str, list[list[float]]] | None = None):
        self.observations = observations or {}  # group -> [[prompt_size, tokens, candidates, seconds], ...]
        self._fits: dict[str, tuple | None] = {}

    @classmethod
    def load(cls) -> CostTable:
        table = read_state(_FILE).get(machine(), {})
        table = table if isinstance(table, dict) else {}
        return cls({k: v for k, v in table.items() if isinstance(v, list)})

    def save(self) -> None:
        """Write this machine's table back (atomically; other machines' tables kept)."""
        everything = read_state(_FILE)
        everything[machine()] = self.observations
        write_state(_FILE, everything)

    def observe(self, item: Item, tokens: int, seconds: float) -> None:
        rows = self.observations.setdefault(group(item), [])
        rows.append([item.n * len(item.prompt), float(tokens), float(item.n), float(seconds)])
        del rows[:-KEEP]
        self._fits.pop(group(item), None)

    def count(self, item: Item) -> int:
        return len(self.observations.get(group(item), []))

    def _fit(self, key: str):
        if key not in self._fits:
            rows = self.observations.get(key, [])
            if not rows:
                self._fits[key] = None
            else:
                import numpy as np

                data = np.asarray(rows, dtype=float)  # [K, 4]
                per_candidate = data[:, 1].sum() / max(data[:, 2].sum(), 1.0)
                if len(rows) < 3:
                    self._fits[key] = (None, float(data[:, 3].mean()), per_candidate)
                else:
                    # a feature that never varied here cannot be told from the intercept: leave it out
                    # rather than extrapolate on an arbitrary split (e.g. one prompt, many seeds)
                    varied = [column for column in (0, 1) if np.ptp(data[:, column]) > 0]
                    design = np.column_stack([np.ones(len(rows))] + [data[:, column] for column in varied])
                    solved = np.linalg.lstsq(design, data[:, 3], rcond=None)[0]
                    coef = np.zeros(3)
                    coef[0] = solved[0]
                    for column, value in zip(varied, solved[1:]):
                        coef[column + 1] = value
                    self._fits[key] = (coef, float(data[:, 3].mean()), per_candidate)
        return self._fits[key]

    def predict(self, item: Item) -> float | None:
        """Expected seconds of `item` here, or None when its group has no observation yet."""
        fit = self._fit(group(item))
        if fit is None:
            return None
        coef, mean, per_candidate = fit
        if coef is None:
            return mean
        seconds = coef[0] + coef[1] * item.n * len(item.prompt) + coef[2] * item.n * per_candidate
        return float(max(seconds, 0.0))

    def estimate(self, items: list[Item]) -> tuple[float, list[str]]:
        """(expected seconds of the items that can be predicted, the groups with no observation)."""
        total, unknown = 0.0, []
        for item in items:
            seconds = self.predict(item)
            if seconds is None:
                if group(item) not in unknown:
                    unknown.append(group(item))
            else:
                total += seconds
        return total, unknown


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["CostTable", "format_seconds", "group", "machine"]
