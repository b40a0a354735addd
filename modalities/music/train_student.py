"""`zoo:tones-student`: a one-step student of `zoo:tones` by direct distillation, DITTO-2's default surrogate.

Paper: Luhman and Luhman 2021, "Knowledge Distillation in Iterative Generative Models for Improved
Sampling Speed". Rule: draw seeded initial noises x_T and prompts, run the teacher's deterministic
guided DDIM chain (``teacher_steps`` steps, the steps DITTO-2 decodes with) to x0, and train a student of
the teacher's architecture (initialised from its weights) to map (x_T, prompt) to that x0 in ONE call:
``loss = ||f(x_T) - x0_teacher||^2`` with ``f(x_T) = a_T x_T - s_T v_student(x_T, T)`` at T = 999.

Why this and not only `zoo:tones-cm` (consistency distillation, the DITTO-2 paper's choice,
`ponder.modalities.music.train_cm`): on this machine's budget (1500 steps, ~13 min) the consistency
student ended further from the teacher's 25-step samples than the teacher's own one-step x0 prediction
(held-out MSE 0.401 vs 0.349, on the first, narrower teacher), because the consistency target has to
propagate from the clean end through all 50 segments; regressing the chain's end points needs no such
propagation. It is what `zoo:digits-student` does for images.

Pairs: prompts are the tags of the teacher-half training clips with the teacher's own dropout (whole
prompt dropped with p = 0.1: the unconditional branch, which DITTO-2's text control steers; each tag with
p = 0.15); the chain runs batched with `train_cm.teacher_step` (guidance 2.0, x0 clipped as the sampler
does), which equals the loaded model's ``sample`` (checked in the tests). The folder is the teacher's
``PonderMelDiffusion`` layout with trailing DDIM spacing (one step starts at t = 999), one step and no
guidance by default (`train_cm.save_student`). Recipe: ``ponder zoo train tones-student``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ponder.modalities.music import tones
from ponder.modalities.music import train as teacher_recipe
from ponder.modalities.music.train_cm import Scales, save_student, student_setup, teacher_step
from ponder.modalities.music.train_judge import half_seeds, n_params, step_generator

NAME = "tones-student"
TEACHER = "tones"
PAIR_SEED = 40_000  # base seed of the training noises (DITTO's candidates use small seeds: kept apart)


@dataclass
class StudentRecipe:
    pairs: int = 1200  # teacher end points to regress on
    teacher_steps: int = 20  # the teacher's DDIM steps (what `bench music` and DITTO-2 decode with)
    guidance: float = 2.0  # the teacher's default CFG scale
    p_uncond: float = 0.1
    p_drop_tag: float = 0.15
    pair_batch: int = 64
    steps: int = 1200  # Adam steps
    schedule_steps: int = 1200
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 50
    weight_decay: float = 0.0
    ema_decay: float = 0.99
    seed: int = 6
    heldout: int = 64
    eval_steps: int = 20
    checkpoint_every: int = 200
    log_every: int = 50


SMOKE = {"pairs": 4, "teacher_steps": 2, "pair_batch": 2, "steps": 2, "schedule_steps": 2, "batch_size": 2,
         "warmup_steps": 1, "heldout": 2, "eval_steps": 2, "checkpoint_every": 1, "log_every": 1}


@torch.no_grad()
def teacher_pairs(teacher: teacher_recipe.Teacher, scheduler, tags: torch.Tensor, x_T: torch.Tensor,
                  steps: int, guidance: float, batch: int, log=None) -> torch.Tensor:
    """The teacher's guided DDIM chain (`steps` steps, diffusers' leading spacing, then the clean end) from
    each x_T [N, mels, F] with tags [N, V] (all-zero rows: unconditional) -> x0 [N, mels, F]; `log` gets a
    line per batch."""
    scheduler.set_timesteps(steps)
    times = [int(t) for t in scheduler.timesteps] + [-1]
    scales = Scales(scheduler)
    out = torch.empty_like(x_T)
    for i in range(0, len(x_T), batch):
        x, y = x_T[i:i + batch], tags[i:i + batch]
        for t, t_next in zip(times[:-1], times[1:]):
            x = teacher_step(teacher, scales, x, torch.full((len(x),), t), torch.full((len(x),), t_next), y, guidance)
        out[i:i + batch] = x
        if log is not None:
            log(f"[{NAME}] teacher pairs {min(i + batch, len(x_T))}/{len(x_T)}")
    return out


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Distil ``zoo_dir/tones`` into ``zoo_dir/tones-student`` (the recipe above) and return its card."""
    cfg, teacher_dir, out_dir, pipe, teacher = student_setup(NAME, name, StudentRecipe, SMOKE, zoo_dir, steps, smoke)
    zoo_dir = Path(zoo_dir)
    scheduler, mel = pipe.scheduler, pipe.mel

    t0 = time.time()
    gen = torch.Generator().manual_seed(PAIR_SEED + cfg.seed)
    clips = [tones.generate(s) for s in half_seeds("teacher", cfg.pairs)]
    tags = teacher_recipe._multi_hot(clips, pipe.tag_encoder)  # [N, V]
    keep_tag = torch.rand(tags.shape, generator=gen) >= cfg.p_drop_tag
    keep_prompt = torch.rand((len(tags), 1), generator=gen) >= cfg.p_uncond
    tags = tags * keep_tag * keep_prompt
    x_T = torch.randn((cfg.pairs, mel.n_mels, pipe.unet.config.sample_size), generator=gen)
    x0 = teacher_pairs(teacher, scheduler, tags, x_T, cfg.teacher_steps, cfg.guidance, cfg.pair_batch, log=log)
    pair_seconds = time.time() - t0
    log(f"[{NAME}] {cfg.pairs} teacher pairs ({cfg.teacher_steps} guided DDIM steps) in {pair_seconds:.0f}s")

    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(teacher).requires_grad_(True)
    ema = copy.deepcopy(teacher).requires_grad_(False)
    scales = Scales(scheduler)
    top = scheduler.config.num_train_timesteps - 1

    def loss_fn(step: int) -> torch.Tensor:
        g = step_generator(cfg.seed, step)
        idx = torch.randint(0, cfg.pairs, (cfg.batch_size,), generator=g)
        t = torch.full((cfg.batch_size,), top)
        a, s = scales(t)
        pred = a * x_T[idx] - s * student(x_T[idx], t, tags[idx])  # the one-step x0
        return (pred - x0[idx]).pow(2).mean()

    run = teacher_recipe.fit(student, ema, cfg, out_dir, loss_fn, log, name=NAME)
    card = {"name": NAME, "kind": "PonderMelDiffusion one-step student (direct distillation, guided)",
            "parameters": n_params(ema), "teacher": f"zoo:{TEACHER}",
            "data": f"zoo:{TEACHER}'s own {cfg.teacher_steps}-step guided DDIM samples from seeded noise (seed "
                    f"{PAIR_SEED + cfg.seed}), prompted with the tags of the first {cfg.pairs} 'teacher'-half train "
                    f"seeds (dropout as in training); card figures on the first {cfg.heldout} held-out seeds' tags",
            "recipe": asdict(cfg), "history": run["history"], "reproduce": f"ponder zoo train {NAME}",
            "metrics": {"pair_seconds": round(pair_seconds, 1), "steps_per_s": run["steps_per_s"],
                        "train_seconds_this_run": run["seconds"], "resumed_from": run["resumed_from"]}}
    return save_student(out_dir, teacher_dir, zoo_dir, ema, scheduler, mel, name=NAME,
                        distilled_from=f"zoo:{TEACHER} (direct distillation of its {cfg.teacher_steps}-step "
                                       "guided DDIM)", card=card, heldout=cfg.heldout, seed=cfg.seed,
                        eval_steps=cfg.eval_steps, log=log)


__all__ = ["NAME", "SMOKE", "StudentRecipe", "teacher_pairs", "train"]
