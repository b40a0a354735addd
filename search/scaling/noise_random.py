"""Random search over initial noises (best-of-N over noises).

Paper: Ma et al. 2025, "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps",
section 3.2 (random search). Rule: draw N initial noises (candidate i from generator (seed, i)), run
the deterministic sampler on each to the clean end, score the decoded samples with the verifier and
return the highest-scored (ties: the lowest index). NFE = N * steps.
"""

from __future__ import annotations

from typing import Any

import torch

from ponder.search.core import Compute, Named, Result, Verifier
from ponder.search.scaling.best_of_n import pick_best
from ponder.search.scaling.common import score_candidates
from ponder.search.scaling.denoise import denoise_candidates
from ponder.search.scaling.noise_common import check_search, no_extra_options


def noise_random(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
                 steps: int | None = None, **options) -> Result:
    """Best of `n` initial noises, each denoised in `steps` deterministic steps.

    Args:
        model: a `Denoiser`. prompt: what `model.condition` takes (a class name, text).
        verifier: scores decoded images (higher is better); required.
        n: number of noises. seed: candidate i's noise comes from generator (seed, i).
        steps: denoising steps per sample (default: the model's).
    Returns:
        A Result whose candidates are all n samples (score = verifier score) and best the top one.
    """
    no_extra_options("noise-random", options, ("steps",))
    verifier, steps = check_search(model, verifier, "noise-random", n, steps)
    compute = Compute()
    with compute.timed(), torch.no_grad():
        candidates, config = denoise_candidates(model, prompt, n=n, seed=seed, compute=compute, steps=steps)
        score_candidates(verifier, prompt, candidates, compute)
    config.update(strategy="noise-random", verifier=verifier.name if isinstance(verifier, Named) else None)
    return Result(best=pick_best(candidates), candidates=candidates, compute=compute, config=config)


__all__ = ["noise_random"]
