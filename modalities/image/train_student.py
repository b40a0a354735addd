"""`zoo:digits-student`: a one-step student of `zoo:digits`, the surrogate DITTO-2 optimises through.

Paper: Luhman and Luhman 2021, "Knowledge Distillation in Iterative Generative Models for Improved
Sampling Speed" (direct distillation of the deterministic sampler). Rule: draw seeded initial noises
x_T and classes, run the teacher's deterministic DDIM chain (TEACHER_STEPS steps) to x0, and train a
student of the teacher's own architecture (initialised from its weights) to map (x_T, class) to that
x0 in ONE network call: ``loss = ||student(x_T, T, class) - teacher_x0||^2``. This is not consistency
distillation (Song et al. 2023, which DITTO-2 uses); it needs no ODE pairs at every noise level, only
the teacher's end points, and serves the same purpose: a cheap differentiable map from noise to image.

The folder is a diffusers ``DDIMPipeline`` like the teacher's, loadable by ``ponder.load("image",
folder)``; its scheduler predicts the sample directly (``prediction_type: "sample"``, so x0 is the
network's output with no division by a vanishing signal rate) with trailing timestep spacing, so a
one-step schedule starts at t = 999 — the student's `timesteps(1)[0]`, where DITTO-2 calls it.
Recipe: `ponder zoo train digits-student` (needs the teacher's shipped weights).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ponder.errors import ZooError


@dataclass
class StudentRecipe:
    pairs: int = 2000  # teacher end points to regress on (candidate seeds 0..pairs-1 of seed PAIR_SEED)
    heldout_pairs: int = 300  # fresh seeds the card's figures come from
    teacher_steps: int = 10  # the teacher DDIM steps the student imitates (what `bench images-ditto` decodes with)
    steps: int = 1500  # Adam steps (with the pairs, about 15 min on 2 busy CPU cores)
    batch_size: int = 32
    lr: float = 3e-4
    seed: int = 0


SMOKE = {"pairs": 16, "heldout_pairs": 8, "teacher_steps": 2, "steps": 2, "batch_size": 4}
PAIR_SEED = 7_000  # base seed of the training noises (DITTO's candidates use seed 0, 1, ...: kept apart)
HELDOUT_SEED = 8_000


def student_scheduler_config(teacher_config: dict) -> dict:
    """The teacher's DDIM config, predicting the sample, with trailing spacing (1 step starts at t=999)."""
    return {**teacher_config, "prediction_type": "sample", "timestep_spacing": "trailing"}


@torch.no_grad()
def teacher_pairs(teacher, count: int, seed: int, steps: int, log=None) -> tuple[torch.Tensor, ...]:
    """(x_T [N, 1, 16, 16], class labels [N], teacher x0 [N, 1, 16, 16]) for candidate seeds (seed, 0..N-1);
    candidate i is of class i mod 10, each class denoised as one batch."""
    from ponder.search.core import candidate_generators

    classes = len(teacher.labels)
    labels = torch.arange(count) % classes
    x_T = torch.zeros((count, *teacher.shape))
    x0 = torch.zeros((count, *teacher.shape))
    for c in range(classes):
        idx = list(range(c, count, classes))
        if not idx:
            continue
        noise = teacher.noise(candidate_generators(seed, idx))  # [b, 1, 16, 16]
        x_T[idx] = noise
        x0[idx] = teacher.sample(noise, teacher.condition(teacher.labels[c], len(idx)), steps)
        if log is not None:
            log(f"[digits-student] teacher pairs: class {teacher.labels[c]} ({len(idx)})")
    return x_T, labels, x0


def train_student(out_dir: Path, zoo_dir: Path, cfg: StudentRecipe, log=print) -> dict:
    """Distil the teacher in ``zoo_dir/digits`` into a one-step student written to `out_dir`."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from ponder.modalities.image import load

    teacher_dir = Path(zoo_dir) / "digits"
    if not (teacher_dir / "model_index.json").is_file():
        raise ZooError(f"the student needs the teacher's weights at {teacher_dir}; build them with "
                       "`ponder zoo train digits`")
    torch.manual_seed(cfg.seed)
    teacher = load(teacher_dir, name="zoo:digits")
    start = time.perf_counter()
    x_T, labels, x0 = teacher_pairs(teacher, cfg.pairs, PAIR_SEED, cfg.teacher_steps, log=log)
    hx_T, hlabels, hx0 = teacher_pairs(teacher, cfg.heldout_pairs, HELDOUT_SEED, cfg.teacher_steps)
    log(f"[digits-student] {cfg.pairs} + {cfg.heldout_pairs} teacher pairs in {time.perf_counter() - start:.1f}s")

    unet = UNet2DModel.from_pretrained(teacher_dir / "unet", local_files_only=True, use_safetensors=True)
    unet.requires_grad_(True).train()
    t_one = torch.full((1,), 999, dtype=torch.long)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)

    def predict(noise, classes):
        return unet(noise, t_one.expand(len(noise)), class_labels=classes).sample  # x0 directly: [b, 1, 16, 16]

    history = []
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, cfg.pairs, (cfg.batch_size,), generator=gen)
        lr = cfg.lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - 1) / cfg.steps))).item()  # cosine
        for group in opt.param_groups:
            group["lr"] = lr
        loss = torch.nn.functional.mse_loss(predict(x_T[idx], labels[idx]), x0[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, cfg.steps // 10) == 0 or step == cfg.steps:
            with torch.no_grad():
                held = float(torch.nn.functional.mse_loss(predict(hx_T, hlabels), hx0))
            history.append({"step": step, "loss": round(float(loss.detach()), 5), "heldout_mse": round(held, 5)})
            log(f"[digits-student] step {step}/{cfg.steps} loss {float(loss.detach()):.4f} held-out mse {held:.4f}")
    unet.eval().requires_grad_(False)
    with torch.no_grad():
        heldout_mse = float(torch.nn.functional.mse_loss(predict(hx_T, hlabels), hx0))
    metrics = {"heldout_mse_to_teacher_x0": round(heldout_mse, 5), "heldout_pairs": cfg.heldout_pairs,
               "teacher_steps": cfg.teacher_steps, **_judged(teacher_dir, zoo_dir, unet, hx_T, hlabels, hx0)}

    teacher_sched = json.loads((teacher_dir / "scheduler" / "scheduler_config.json").read_text())
    sched = DDIMScheduler.from_config(student_scheduler_config(teacher_sched))
    card = {"name": "digits-student", "kind": "UNet2DModel one-step student (direct distillation)",
            "parameters": sum(p.numel() for p in unet.parameters()), "teacher": "zoo:digits",
            "data": f"zoo:digits' own {cfg.teacher_steps}-step DDIM samples from seeded noise (seed {PAIR_SEED})",
            "recipe": asdict(cfg), "metrics": metrics, "history": history,
            "reproduce": "ponder zoo train digits-student"}
    index = json.loads((teacher_dir / "model_index.json").read_text())
    _write(out_dir, DDIMPipeline(unet=unet, scheduler=sched), index, card)
    return card


def _judged(teacher_dir: Path, zoo_dir: Path, unet, hx_T, hlabels, hx0) -> dict:
    """Held-out judge accuracy of the student's one-step images and of the teacher's (when the judge is built)."""
    judge_dir = Path(zoo_dir) / "digits-judge"
    if not (judge_dir / "config.json").is_file():
        return {}
    from ponder.modalities.image.digits import to_pil
    from ponder.modalities.image.verifiers import ClassifierVerifier

    judge = ClassifierVerifier.from_folder(judge_dir, name="digits-judge")
    with torch.no_grad():
        student_x0 = unet(hx_T, torch.full((len(hx_T),), 999), class_labels=hlabels).sample.clamp(-1, 1)
    out = {}
    for key, images in (("student_one_step", student_x0), ("teacher", hx0.clamp(-1, 1))):
        predicted = judge.logits(to_pil(images)).argmax(-1)
        out[f"judge_accuracy_{key}"] = round(float((predicted == hlabels).float().mean()), 4)
    return out


def _write(out_dir: Path, pipe, index: dict, card: dict) -> None:
    """The pipeline folder, written next to `out_dir` and renamed into place (never half a folder)."""
    import shutil

    tmp = out_dir.with_name(out_dir.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    saved = json.loads((tmp / "model_index.json").read_text())
    saved["id2label"] = index.get("id2label")
    (tmp / "model_index.json").write_text(json.dumps(saved, indent=2) + "\n")
    (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """`ponder zoo train digits-student`: the recipe above into ``zoo_dir/digits-student``."""
    if name != "digits-student":
        raise ZooError(f"this recipe builds digits-student, not {name!r}")
    cfg = StudentRecipe(**{**asdict(StudentRecipe()), **(SMOKE if smoke else {})})
    if steps is not None:
        cfg.steps = int(steps)
    return train_student(Path(zoo_dir) / name, Path(zoo_dir), cfg, log=log)
