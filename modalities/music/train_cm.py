"""`zoo:tones-cm`: the consistency-distilled one-step student of `zoo:tones`, DITTO-2's surrogate.

Paper: Song, Dhariwal, Chen and Sutskever 2023, "Consistency Models" (consistency distillation, CD), in
the guided, skipping-step form of Luo et al. 2023, "Latent Consistency Models". Rule: a consistency
function f(x_t, t) maps every point of the teacher's probability-flow ODE trajectory to its clean end, with
the boundary condition f(x, t_min) = x built into the parameterisation
``f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, t)``. Training draws clean x0, a grid index n and noise,
forms x_t at grid time t_n, takes ONE teacher DDIM step of the guided ODE to the next-cleaner grid time
t_{n-1}, and regresses ``f_student(x_{t_n}, t_n)`` onto ``f_target(x_hat_{t_{n-1}}, t_{n-1})`` (stop-gradient;
at the clean end the target is x_hat itself). One call ``f(x_T, T)`` is then a one-step sample.

Here:
* **Grid**: the teacher's 1000 training timesteps skipped by 20 (``skip``): 999, 979, ..., 19, then the
  clean end (-1, alpha = 1); the teacher's ODE solver is its own DDIM step, x0 clipped to [-1, 1] as its
  sampler does.
* **Guidance**: the teacher step uses classifier-free guidance at the teacher's default scale (2.0) for
  tagged prompts; prompts dropped whole (p = 0.1, the unconditional branch DITTO-2 steers with the text
  control) use the unconditional prediction. The student is guidance-distilled: its folder says
  ``default_guidance_scale: 1.0`` (one network call per row) and ``default_steps: 1``.
* **Parameterisation**: the student is the teacher's architecture initialised from its weights,
  predicting v; ``x0_hat = a_t x_t - s_t v`` and LCM's boundary scalings ``c_skip = 0.25 / ((10 t)^2 + 0.25)``,
  ``c_out = 10 t / sqrt((10 t)^2 + 0.25)`` (t the integer timestep; at t = 999 c_skip ~ 3e-9, so the
  folder's own DDIM ``predict_x0`` at its one trailing step, t = 999, is f).
* **Target network**: the student itself under stop-gradient (EMA decay 0 for the target, as Song &
  Dhariwal 2023 recommend); the shipped weights are an EMA (``ema_decay``) of the student.
* **Loss**: the pseudo-Huber metric ``sqrt(||d||^2 / D + c^2) - c`` (Song & Dhariwal 2023) with c = 0.01.

The folder is a ``PonderMelDiffusion`` folder like the teacher's (`families.MelDiffusion`), loadable with
``ponder.load("music", "zoo:tones-cm")``, with a DDIM scheduler of trailing spacing (one step starts at
t = 999). Recipe: ``ponder zoo train tones-cm`` (needs the teacher's built weights); it checkpoints and
resumes (`train.fit`).

**Card.** On held-out noises and held-out clips' tags: the MSE of the student's one-step x0 to the
teacher's 25-step guided sample from the same noise, next to the MSE of the teacher's own one-step x0
prediction (the surrogate DITTO-2 falls back to without a student); the mel-statistics distance of
one-step samples to held-out clips beside the teacher's; and, with the judge built next to it, the
judge's tag accuracy of both.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ponder.errors import ZooError, check_int
from ponder.modalities.music import tones
from ponder.modalities.music import train as teacher_recipe
from ponder.modalities.music.train_judge import TAG_GROUPS, half_seeds, n_params, save_zoo_folder, step_generator

NAME = "tones-cm"
TEACHER = "tones"


@dataclass
class CMRecipe:
    steps: int = 1500  # optimiser steps
    schedule_steps: int = 1500  # the cosine's horizon (`train.lr_at`)
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 50
    weight_decay: float = 0.0
    ema_decay: float = 0.995  # the shipped weights
    seed: int = 5
    train_clips: int = 2000  # the teacher's own training clips (the teacher half)
    heldout: int = 64  # held-out noises / clips' tags of the card
    skip: int = 20  # grid spacing in training timesteps (LCM's k): 50 ODE segments
    guidance: float = 2.0  # the teacher's CFG scale in its ODE step (its default)
    p_uncond: float = 0.1  # prompts dropped whole: the unconditional ODE
    p_drop_tag: float = 0.15  # each remaining tag dropped: partial prompts (as the teacher trained)
    huber_c: float = 0.01
    checkpoint_every: int = 250
    log_every: int = 50
    eval_steps: int = 25  # the teacher's sampler steps the card compares the one-step student with


SMOKE = {"steps": 2, "schedule_steps": 2, "batch_size": 2, "warmup_steps": 1, "train_clips": 4, "heldout": 2,
         "checkpoint_every": 1, "log_every": 1, "eval_steps": 2, "skip": 250}


def grid(cfg: CMRecipe, train_timesteps: int) -> list[int]:
    """The ODE grid, noisiest first, ending at the clean end -1: 999, 979, ..., 19, -1 (skip 20)."""
    top = train_timesteps - 1
    return list(range(top, -1, -cfg.skip)) + [-1]


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's (c_skip, c_out) at integer timesteps t [B] (sigma_data 0.5, timestep scaling 10): c_skip -> 1 as
    t -> 0, so f(x, t_min) = x; the clean end t = -1 gives exactly (1, 0)."""
    scaled = 10.0 * t.clamp(min=0).double()
    c_skip = 0.25 / (scaled ** 2 + 0.25)
    c_out = scaled / (scaled ** 2 + 0.25).sqrt()
    return c_skip.float(), c_out.float()


class Scales:
    """a(t), s(t) of the teacher's DDIM forward process at integer timesteps, the clean end -1 -> (1, 0)."""

    def __init__(self, scheduler):
        acp = scheduler.alphas_cumprod.float()  # [T]
        self.acp = torch.cat([acp, torch.ones(1)])  # index -1 -> alpha 1 (set_alpha_to_one)

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acp = self.acp[t]  # [B]
        return acp.sqrt()[:, None, None], (1 - acp).clamp(min=0).sqrt()[:, None, None]  # [B, 1, 1] each


def consistency(net: teacher_recipe.Teacher, scales: Scales, x_t: torch.Tensor, t: torch.Tensor,
                tags: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) = c_skip x_t + c_out (a x_t - s v): x_t [B, mels, F], integer t [B] (>= 0), tags [B, V]."""
    a, s = scales(t)
    x0 = a * x_t - s * net(x_t, t, tags)
    c_skip, c_out = boundary_scalings(t)
    return c_skip[:, None, None] * x_t + c_out[:, None, None] * x0


@torch.no_grad()
def teacher_step(teacher: teacher_recipe.Teacher, scales: Scales, x_t: torch.Tensor, t: torch.Tensor,
                 s_next: torch.Tensor, tags: torch.Tensor, guidance: float) -> torch.Tensor:
    """One guided DDIM step of the teacher's ODE from t to s_next (rows with no tags: unconditional).
    x0 is clipped to [-1, 1] as the teacher's sampler does. -> x_{s_next} [B, mels, F]"""
    b = x_t.shape[0]
    both = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([tags, torch.zeros_like(tags)]))
    cond, uncond = both[:b], both[b:]
    tagged = (tags.sum(-1) > 0)[:, None, None]  # [B, 1, 1]
    v = torch.where(tagged, uncond + guidance * (cond - uncond), uncond)
    a, s = scales(t)
    x0 = (a * x_t - s * v).clamp(-1, 1)
    eps = s * x_t + a * v
    a_n, s_n = scales(s_next)
    return a_n * x0 + s_n * eps


def student_index(teacher_index: dict, distilled_from: str) -> dict:
    """A one-step, guidance-distilled student's model_index.json: the teacher's, defaulting to 1 step, no CFG."""
    return {**teacher_index, "default_guidance_scale": 1.0, "default_steps": 1, "distilled_from": distilled_from}


@torch.no_grad()
def card_metrics(teacher_dir: Path, folder: Path, zoo_dir: Path, *, name: str, heldout: int, seed: int,
                 eval_steps: int, log) -> dict:
    """A one-step student's held-out card figures, read through the music loader users reach (both folders
    as written): its x0 against the teacher's `eval_steps`-step sample from the same noise, beside the
    teacher's own one-step x0 (DITTO-2's fallback surrogate); mel statistics; judge tag accuracy."""
    from ponder.modalities.music import load
    from ponder.search.core import candidate_generators

    teacher = load(teacher_dir, name=f"zoo:{TEACHER}")
    student = load(folder, name=f"zoo:{name}")
    held = list(tones.clips("heldout", heldout))
    xh = teacher_recipe._clip_features(held, teacher.family.mel)
    prompts = [c.tags for c in held]
    x_T = teacher.noise(candidate_generators(30_000 + seed, range(len(held))))  # [H, mels, F]
    multi, s_one, teacher_one = [], [], []
    t_top = teacher.timesteps(eval_steps)[0]  # where DITTO-2's no-student surrogate calls the teacher
    for i, prompt in enumerate(prompts):
        row = x_T[i:i + 1]
        cond = teacher.condition(prompt)
        multi.append(teacher.sample(row, cond, eval_steps))
        teacher_one.append(teacher.predict_x0(row, t_top, cond))
        s_one.append(student.predict_x0(row, student.timesteps(1)[0], student.condition(prompt)))
    multi, s_one, teacher_one = torch.cat(multi), torch.cat(s_one), torch.cat(teacher_one)
    out = {"heldout": len(held), "teacher_steps": eval_steps,
           "mse_to_teacher_student_one_step": round(float((s_one - multi).pow(2).mean()), 5),
           "mse_to_teacher_teacher_one_step": round(float((teacher_one - multi).pow(2).mean()), 5),
           "mel_stats_distance_student_one_step": round(teacher_recipe.mel_stats_distance(s_one, xh), 4),
           "mel_stats_distance_teacher": round(teacher_recipe.mel_stats_distance(multi, xh), 4),
           "student_nfe_per_sample": 1, "teacher_nfe_per_sample": 2 * eval_steps}
    judge_dir = Path(zoo_dir) / teacher_recipe.JUDGE
    if (judge_dir / "config.json").is_file():
        from ponder.modalities.music.train_judge import TonesJudge

        judge = TonesJudge.from_folder(judge_dir)
        for key, x in (("student_one_step", s_one), ("teacher", multi)):
            waves = torch.cat([teacher.decode_tensor(x[i:i + 8]) for i in range(0, len(x), 8)])
            predicted = judge.predict_tags(waves, teacher.sample_rate)
            for k, group in enumerate(TAG_GROUPS):
                right = [p.split(", ")[k] == q.split(", ")[k] for p, q in zip(predicted, prompts)]
                out[f"judge_{group}_accuracy_{key}"] = round(sum(right) / len(right), 4)
    else:
        log(f"[{name}] no {teacher_recipe.JUDGE} built in {zoo_dir}: the card has no judge figures")
    return out


def save_student(out_dir: Path, teacher_dir: Path, zoo_dir: Path, net: teacher_recipe.Teacher, scheduler, mel,
                 *, name: str, distilled_from: str, card: dict, heldout: int, seed: int, eval_steps: int,
                 log) -> dict:
    """Write a one-step student folder (the teacher's layout, trailing DDIM spacing so one step starts at
    t = 999, `student_index` defaults), measure its `card_metrics` on the folder as written, and swap it
    into `out_dir` with ``card`` + its metrics as card.json. Returns the card."""
    import shutil

    from diffusers import DDIMScheduler

    teacher_index = json.loads((Path(teacher_dir) / "model_index.json").read_text())
    one_step = DDIMScheduler.from_config({**dict(scheduler.config), "timestep_spacing": "trailing"})

    def write(folder: Path) -> None:
        teacher_recipe.write_folder(folder, net, one_step, mel, None)
        (folder / "model_index.json").write_text(json.dumps(student_index(teacher_index, distilled_from),
                                                            indent=2) + "\n")

    staging = out_dir.with_name(out_dir.name + ".eval.saving")  # the card reads the written folder
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    try:
        metrics = card_metrics(teacher_dir, staging, zoo_dir, name=name, heldout=heldout, seed=seed,
                               eval_steps=eval_steps, log=log)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    card = {**card, "metrics": {**metrics, **card.get("metrics", {})}}
    log(f"[{name}] held-out MSE to the teacher's {eval_steps}-step sample: one-step student "
        f"{metrics['mse_to_teacher_student_one_step']}, the teacher's own one-step x0 "
        f"{metrics['mse_to_teacher_teacher_one_step']}")

    def write_with_card(folder: Path) -> None:
        write(folder)
        (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    save_zoo_folder(out_dir, write_with_card)
    return card


def student_setup(recipe_name: str, name: str, recipe_cls, smoke_fields: dict, zoo_dir: Path, steps: int | None,
                  smoke: bool):
    """What a student recipe starts from: (its recipe, the teacher's folder, its own folder, the teacher's
    pipeline parts, the frozen `train.Teacher`); a ZooError for another name or an unbuilt teacher."""
    from ponder.modalities.music.families import MelDiffusion

    if name != recipe_name:
        raise ZooError(f"this recipe builds {recipe_name!r}, not {name!r}")
    cfg = recipe_cls(**smoke_fields) if smoke else recipe_cls()
    if steps is not None:
        cfg = replace(cfg, steps=check_int("steps", steps))
    zoo_dir = Path(zoo_dir)
    teacher_dir, out_dir = zoo_dir / TEACHER, zoo_dir / recipe_name
    if not (teacher_dir / "model_index.json").is_file():
        raise ZooError(f"{recipe_name} distils the teacher at {teacher_dir}; build it first with "
                       f"`ponder zoo train {TEACHER}`")
    pipe = MelDiffusion.load_pipeline(teacher_dir, "PonderMelDiffusion", {})
    teacher = teacher_recipe.Teacher(pipe.unet, pipe.tag_encoder).requires_grad_(False).eval()
    return cfg, teacher_dir, out_dir, pipe, teacher


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Distil ``zoo_dir/tones`` into ``zoo_dir/tones-cm`` (the recipe above) and return its card."""
    cfg, teacher_dir, out_dir, pipe, teacher = student_setup(NAME, name, CMRecipe, SMOKE, zoo_dir, steps, smoke)
    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(teacher).requires_grad_(True)
    ema = copy.deepcopy(teacher).requires_grad_(False)
    scheduler, mel = pipe.scheduler, pipe.mel
    scales = Scales(scheduler)
    times = torch.tensor(grid(cfg, scheduler.config.num_train_timesteps))  # [G + 1]

    t0 = time.time()
    clips = [tones.generate(s) for s in half_seeds("teacher", cfg.train_clips)]
    x = teacher_recipe._clip_features(clips, mel).to(torch.float16)  # [N, mels, F]
    y = teacher_recipe._multi_hot(clips, pipe.tag_encoder)  # [N, V]
    log(f"[{NAME}] {len(clips)} teacher-half clips, features {tuple(x.shape)} in {time.time() - t0:.0f}s; "
        f"{len(times) - 1} ODE segments; {n_params(student):,} parameters")

    def loss_fn(step: int) -> torch.Tensor:
        gen = step_generator(cfg.seed, step)
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
        x0 = x[idx].float()
        noise = torch.randn(x0.shape, generator=gen)
        n = torch.randint(0, len(times) - 1, (cfg.batch_size,), generator=gen)  # segment: t_n -> t_{n+1}
        t, s_next = times[n], times[n + 1]
        keep_tag = torch.rand(y[idx].shape, generator=gen) >= cfg.p_drop_tag
        keep_prompt = torch.rand((cfg.batch_size, 1), generator=gen) >= cfg.p_uncond
        tags = y[idx] * keep_tag * keep_prompt
        a, s = scales(t)
        x_t = a * x0 + s * noise
        x_next = teacher_step(teacher, scales, x_t, t, s_next, tags, cfg.guidance)
        with torch.no_grad():  # the target: the student itself under stop-gradient; the clean end is x_next
            clean = s_next < 0
            target = consistency(student, scales, x_next, s_next.clamp(min=0), tags)
            target = torch.where(clean[:, None, None], x_next, target)
        pred = consistency(student, scales, x_t, t, tags)
        d2 = (pred - target).pow(2).flatten(1).mean(1)  # [B]
        return ((d2 + cfg.huber_c ** 2).sqrt() - cfg.huber_c).mean()

    run = teacher_recipe.fit(student, ema, cfg, out_dir, loss_fn, log, name=NAME)
    card = {"name": NAME, "kind": "PonderMelDiffusion one-step student (consistency distillation, guided)",
            "parameters": n_params(ema), "teacher": f"zoo:{TEACHER}",
            "data": f"the teacher's training clips (first {len(clips)} 'teacher'-half train seeds); the teacher's "
                    f"guided DDIM ODE steps on {len(times) - 1} segments; card figures on the first "
                    f"{cfg.heldout} held-out seeds' tags with fresh noise",
            "recipe": asdict(cfg), "history": run["history"], "reproduce": f"ponder zoo train {NAME}",
            "metrics": {"steps_per_s": run["steps_per_s"], "train_seconds_this_run": run["seconds"],
                        "resumed_from": run["resumed_from"]}}
    return save_student(out_dir, teacher_dir, zoo_dir, ema, scheduler, mel, name=NAME,
                        distilled_from=f"zoo:{TEACHER} (consistency distillation, guidance-distilled)", card=card,
                        heldout=cfg.heldout, seed=cfg.seed, eval_steps=cfg.eval_steps, log=log)


__all__ = ["CMRecipe", "NAME", "SMOKE", "Scales", "boundary_scalings", "card_metrics", "consistency", "grid",
           "save_student", "student_index", "student_setup", "teacher_step", "train"]
