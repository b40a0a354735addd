"""DITTO-2: optimise the initial noise through a one-step surrogate, then decode it with the full sampler.

Paper: Novack, Zhu, McAuley, Berg-Kirkpatrick and Bryan 2024, "DITTO-2: Distilled Diffusion
Inference-Time T-Optimization for Music Generation". Rule: (1) a one-step surrogate maps x_T to x0 —
the consistency-distilled student of the teacher when one is given (``student=``), otherwise the
teacher's own one-step x0 prediction at the noisiest time (recorded as ``config["surrogate"]``);
(2) Adam optimises x_T against ``-score_tensor`` of the surrogate's decoded x0 (one network call per
step instead of a whole chain, so far cheaper than DITTO); (3) the optimised x_T is decoded with the
teacher's multi-step deterministic sampler. As DITTO returns the best iterate it reached, a candidate
keeps its initial noise's decode when the optimised one scores lower (``meta["kept"]``: "optimised" or
"initial"; ``score_after`` is always the optimised decode's). How far the surrogate's optimum carries over is measured
for every candidate: its multi-step score before (plain sampling from the same seed) and after, next
to the surrogate's score before and after; ``config["carry_over"]`` is the mean multi-step gain over
the mean surrogate gain.

Modality-free: any `Denoiser` that `DecodesTensor` and any `DifferentiableVerifier`.
"""

from __future__ import annotations

from typing import Any

import torch

from ponder.errors import ConfigError
from ponder.search.core import Candidate, Compute, Denoiser, Named, Result, Verifier, candidate_seed
from ponder.search.scaling.best_of_n import pick_best
from ponder.search.scaling.denoise import denoise, nfe_counter
from ponder.search.scaling.ditto import check_optimisation, optimise_noise
from ponder.search.scaling.noise_common import base_config, seeded_noise


def ditto2(model, prompt: Any, verifier: Verifier | None = None, *, n: int, seed: int = 0,
           steps: int | None = None, opt_steps: int = 20, lr: float = 0.05, student=None) -> Result:
    """DITTO-2: `n` seeded noises optimised through a one-step surrogate, decoded in `steps` steps.

    Args:
        model: the teacher, a `Denoiser` that `DecodesTensor`.
        prompt: what `model.condition` takes.
        verifier: a `DifferentiableVerifier` whose `score_tensor` is maximised (required).
        n: candidates. seed: candidate i starts from the noise of generator (seed, i).
        steps: the teacher's sampler steps for the final decode (default: the model's).
        opt_steps: Adam steps (> 0). lr: Adam's step size.
        student: a one-step `Denoiser` of the same latent shape (a consistency-distilled student);
            None uses the teacher's one-step x0 prediction.
    Returns:
        A Result whose candidates are the multi-step decodes of the optimised noises (or of the initial ones
        where those scored higher), scored by the verifier's `score_tensor`; ``meta`` holds the surrogate's
        and the multi-step scores before and after, and which decode was kept.
    """
    verifier, steps, opt_steps, lr = check_optimisation(model, verifier, "ditto-2", n, steps, opt_steps, lr)
    if student is not None and not isinstance(student, Denoiser):
        raise ConfigError(f"student must be a one-step diffusion model (a Denoiser) of the same latents, "
                          f"got {type(student).__name__}")
    compute = Compute()
    indices = list(range(n))
    with compute.timed():
        cond = model.condition(prompt, n)
        times = model.timesteps(steps)
        x_T = seeded_noise(model, seed, indices)  # [B, ...]
        if student is not None:  # a student samples the teacher's latent space, or it cannot stand in for it
            shape = tuple(student.noise([torch.Generator().manual_seed(0)]).shape[1:])
            if shape != tuple(x_T.shape[1:]):
                raise ConfigError(f"the student samples latents of shape {shape}, the teacher {tuple(x_T.shape[1:])}; "
                                  "a student must share the teacher's latents")
        one_step = student if student is not None else model
        one_cond = student.condition(prompt, n) if student is not None else cond
        t_one = one_step.timesteps(1)[0] if student is not None else times[0]

        def surrogate(noise: torch.Tensor) -> torch.Tensor:
            return one_step.predict_x0(noise, t_one, one_cond)  # [B, ...]: one network call per row

        def multi_step_scores(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                x0 = denoise(model, noise, cond, times, compute)  # NFEs counted inside
                scores = verifier.score_tensor(prompt, model.decode_tensor(x0)).float()  # [B]
            compute.verifier_calls += noise.shape[0]
            return x0, scores

        x0_before, before = multi_step_scores(x_T)
        with nfe_counter(one_step, compute, rows=n * (opt_steps + 1)):
            best_noise, _, surrogate_after, history = optimise_noise(
                model, verifier, prompt, x_T, surrogate, opt_steps=opt_steps, lr=lr, compute=compute)
        x0, after = multi_step_scores(best_noise)
        # like DITTO's best iterate: a candidate never ends below its own start (the surrogate can mislead)
        keep = after >= before  # [B]
        x0 = torch.where(keep.view(-1, *[1] * (x0.dim() - 1)), x0, x0_before)
        outputs = model.decode(x0)
    surrogate_before = torch.tensor([h[0] for h in history])
    candidates = [Candidate(output=out, score=float(max(after[i], before[i])), seed=candidate_seed(seed, i),
                            meta={"index": i, "score_before": float(before[i]), "score_after": float(after[i]),
                                  "kept": "optimised" if bool(keep[i]) else "initial",
                                  "surrogate_before": float(surrogate_before[i]),
                                  "surrogate_after": float(surrogate_after[i]),
                                  "surrogate_history": [round(v, 6) for v in history[i]]})
                  for i, out in enumerate(outputs)]
    surrogate_gain = float((surrogate_after - surrogate_before).mean())
    multi_gain = float((after - before).mean())
    config = base_config(model, prompt, verifier, "ditto-2", n, seed, steps)
    config.update(opt_steps=opt_steps, lr=lr,
                  surrogate=(f"student {student.name}" if isinstance(student, Named) else "student")
                  if student is not None else "the teacher's one-step x0 prediction (no student given)",
                  surrogate_gain=surrogate_gain, multi_step_gain=multi_gain,
                  carry_over=multi_gain / surrogate_gain if surrogate_gain > 0 else None)
    return Result(best=pick_best(candidates), candidates=candidates, compute=compute, config=config)


__all__ = ["ditto2"]
