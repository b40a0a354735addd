"""Scaling strategies: one signature, each returns a `Result`.

``strategy(model, prompt, verifier, *, n, seed=0, **options) -> Result``

Names (CLI ``--strategy`` and ``ponder.generate(strategy=...)``; ``_`` and ``-`` are the same):
sample, best-of-n, weighted-best-of-n, worst-of-n, self-consistency, rpc, beam, dvts, diverse-beam,
particles, compute-optimal, adaptive, rag (retrieval-augmented, with answer reranking); over a
diffusion `Denoiser`: noise-random, noise-zero-order, noise-paths, and the noise optimisers ditto and
ditto-2 (with a differentiable verifier).
"""

from __future__ import annotations

from collections.abc import Callable

from ponder.search.core import lookup
from ponder.search.scaling.adaptive import adaptive
from ponder.search.scaling.beam_search import beam_search
from ponder.search.scaling.best_of_n import best_of_n, coverage, pass_at_k, weighted_best_of_n, worst_of_n
from ponder.search.scaling.compute_optimal import compute_optimal
from ponder.search.scaling.ditto import ditto
from ponder.search.scaling.ditto2 import ditto2
from ponder.search.scaling.diverse_beam import diverse_beam
from ponder.search.scaling.dvts import dvts
from ponder.search.scaling.noise_paths import noise_paths
from ponder.search.scaling.noise_random import noise_random
from ponder.search.scaling.noise_zero_order import noise_zero_order
from ponder.search.scaling.particle_filter import particle_filter
from ponder.search.scaling.rag import rag
from ponder.search.scaling.rpc import rpc
from ponder.search.scaling.sample import sample
from ponder.search.scaling.self_consistency import self_consistency

STRATEGIES: dict[str, Callable] = {
    "sample": sample,
    "best-of-n": best_of_n,
    "weighted-best-of-n": weighted_best_of_n,
    "worst-of-n": worst_of_n,
    "self-consistency": self_consistency,
    "rpc": rpc,
    "beam": beam_search,
    "dvts": dvts,
    "diverse-beam": diverse_beam,
    "particles": particle_filter,
    "compute-optimal": compute_optimal,
    "adaptive": adaptive,
    "rag": rag,
    "noise-random": noise_random,
    "noise-zero-order": noise_zero_order,
    "noise-paths": noise_paths,
    "ditto": ditto,
    "ditto-2": ditto2,
}
# strategies that search over (or optimise) a diffusion model's noise (they need a Denoiser)
NOISE_STRATEGIES = ("noise-random", "noise-zero-order", "noise-paths", "ditto", "ditto-2")
# strategies that read partial outputs step by step (they need a process verifier)
STEP_STRATEGIES = ("beam", "dvts", "diverse-beam", "particles")


def get_strategy(name: str) -> Callable:
    key = name.replace("_", "-") if isinstance(name, str) else name
    return STRATEGIES[key] if key in STRATEGIES else lookup(STRATEGIES, "strategy", name)


__all__ = ["NOISE_STRATEGIES", "STEP_STRATEGIES", "STRATEGIES", "adaptive", "beam_search", "best_of_n",
           "compute_optimal", "coverage", "ditto", "ditto2", "diverse_beam", "dvts", "get_strategy", "noise_paths",
           "noise_random", "noise_zero_order", "pass_at_k", "particle_filter", "rpc", "sample",
           "self_consistency", "weighted_best_of_n", "worst_of_n"]
