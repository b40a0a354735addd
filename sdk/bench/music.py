"""`ponder bench music`: DITTO, DITTO-2 and random noise search with music controls on zoo:tones.

Targets come from held-out tones clips (`tones.clips("heldout")`, which no zoo model trained on), one clip
per target, different clips for each control:

* ``intensity`` — the clip's loudness curve (the bench's 0.5 s-smoothed frame dBFS, 10 values a second) as
  the `Intensity` target; prompt: the clip's tags;
* ``melody``    — the clip's waveform as the `Melody` reference; prompt: its tags;
* ``structure`` — the clip's form (``AABA`` …; forms with no repeat or no contrast are skipped); its tags;
* ``inpaint``   — the clip as the reference, 1.0-2.5 s regenerated; its tags;
* ``text``      — zoo:tones-clap similarity to the clip's tag text, prompting the UNCONDITIONAL model
  (``""``): DITTO-2's text steering of a branch never conditioned on the text.

Methods per target (candidate seed = the target's index, so all methods start from the same noise;
STEPS DDIM steps, the teacher's default guidance): ``plain`` (one sample); ``ditto-2`` (OPT2 Adam steps
through the teacher's zoo student, zoo:tones-student, then the STEPS-step decode; a candidate keeps its
plain decode if the optimised one scores lower); ``random`` (best of K seeded noises by the same control,
K chosen so its wall time matches DITTO-2's: the best of the first K of an N_RANDOM run, since candidate
i's noise does not depend on N). On the first DITTO_TARGETS targets of each control also ``ditto`` (DITTO_OPT
Adam steps through the whole checkpointed chain) and DITTO-2 at the other budgets OPT2_CURVE.

Every figure is measured on the final waveform as users get it (the `Audio` output, clamped to [-1, 1]):
the control's own loss (the plot's y axis; the optimisers saw it on the unclamped decode) and the bench's
own measurement (`ponder.bench.music_features`, other windows and estimators; the judge zoo:tones-judge for
tags and the Fréchet distance, never used by search): intensity: Pearson correlation of the output's
loudness with the target curve; melody: the fraction of the reference's sounding frames whose estimated
pitch class the output matches; structure: the output's form contrast (same-letter minus different-letter
section similarity); inpaint: the kept region's log-spectral distance to the reference; text: the
judge's tag accuracy against the text's tags.

Goals (one run): DITTO-2 reaches DITTO's final control loss >= 10x faster in wall time (per control, on
the DITTO subset: the cheapest DITTO-2 budget whose mean loss is at most DITTO's); a 4 s intensity clip
with DITTO-2, optimisation included, faster than real time; DITTO-2's melody accuracy >= 2x plain's;
its intensity correlation >= 0.9; the judge's Fréchet distance to held-out clips of DITTO-2's outputs
within 10% of plain sampling's (pooled over the conditional controls).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from ponder.bench import goal
from ponder.bench import music_features as mf

CONTROLS = ("intensity", "melody", "structure", "inpaint", "text")
TARGETS, QUICK_TARGETS = 24, 2  # per control (DITTO-2, plain, random): 120 targets in all
DITTO_TARGETS, QUICK_DITTO_TARGETS = 3, 1  # per control (DITTO and the DITTO-2 budget curve): 15 in all
STEPS = 20  # DDIM steps of every decode
DITTO_OPT, OPT2, OPT2_CURVE = 15, 20, (5, 10, 40)
QUICK_OPT = {"ditto": 2, "ditto-2": 2, "curve": (1,)}
LR = 0.1
N_RANDOM = 6
INPAINT = (1.0, 2.5)
FD_REFERENCE_START = 100_000  # the Frechet reference clips: held-out seeds from here (no target's)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout carries the --json report


def mean_se(values) -> tuple[float, float]:
    values = [float(v) for v in values if not math.isnan(float(v))]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _wave(output) -> np.ndarray:
    wave = output.waveform
    wave = wave.detach().cpu().numpy() if hasattr(wave, "detach") else np.asarray(wave)
    return wave.astype(np.float64).reshape(-1)


class Target:
    """One held-out clip made into one control target: the control, the prompt and how to measure."""

    def __init__(self, control: str, clip, sample_rate: int, clap, judge):
        from ponder.modalities.music import controls as ctl

        self.control, self.clip, self.judge = control, clip, judge
        wave = clip.waveform.astype(np.float32)
        self.prompt = clip.tags
        if control == "intensity":
            loud = mf.loudness_db(wave)
            times = np.arange(0.05, clip.seconds, 0.1)  # 10 values a second, first at 0.05 s
            self.curve = np.interp(times, mf.loudness_times(len(loud)), loud)
            self.verifier = ctl.Intensity(self.curve.round(2).tolist(), sample_rate)
        elif control == "melody":
            self.verifier = ctl.Melody(wave, sample_rate)
        elif control == "structure":
            self.verifier = ctl.Structure(clip.form, sample_rate)
        elif control == "inpaint":
            import torch

            self.verifier = ctl.Inpaint(torch.from_numpy(wave), *INPAINT, sample_rate)
        else:  # text: the unconditional model steered towards the clip's tags
            self.prompt = ""
            self.verifier = ctl.TextAdherence(*clap, sample_rate=sample_rate, text=clip.tags)

    def measure(self, wave: np.ndarray) -> float:
        """The bench's own measurement of a final waveform (see the module docstring)."""
        if self.control == "intensity":
            loud = mf.loudness_db(wave)
            times = np.arange(0.05, self.clip.seconds, 0.1)
            return mf.pearson(np.interp(times, mf.loudness_times(len(loud)), loud), self.curve)
        if self.control == "melody":
            return mf.melody_accuracy(wave, self.clip.notes)
        if self.control == "structure":
            return mf.form_contrast(wave, self.clip.form)
        if self.control == "inpaint":
            return mf.kept_distance(wave, self.clip.waveform, *INPAINT)
        predicted = self.judge.predict_tags(wave[None].astype(np.float32), mf.SR)[0].split(", ")
        return float(np.mean([p == q for p, q in zip(predicted, self.clip.tags.split(", "))]))


MEASURE = {"intensity": "loudness_corr", "melody": "melody_accuracy", "structure": "form_contrast",
           "inpaint": "kept_log_spectral_distance", "text": "judge_tag_accuracy"}


def _targets(control: str, count: int, seeds, sample_rate: int, clap, judge) -> list[Target]:
    """`count` targets of `control` from the next held-out seeds of the iterator `seeds`."""
    from ponder.modalities.music import tones

    out = []
    while len(out) < count:
        clip = tones.generate(next(seeds))
        if control == "structure":
            pairs = [(a == b) for i, a in enumerate(clip.form) for b in clip.form[i + 1:]]
            if all(pairs) or not any(pairs):  # AAAA (nothing to contrast) or ABCD (no repeat)
                continue
        out.append(Target(control, clip, sample_rate, clap, judge))
    return out


def run(quick: bool = False, plot_dir=None, log=_stderr) -> dict:
    import torch
    from tqdm import tqdm

    import ponder
    from ponder import zoo
    from ponder.modalities.music.controls import load_clap
    from ponder.modalities.music.train_judge import TonesJudge
    from ponder.search.scaling import ditto, ditto2, noise_random

    torch.manual_seed(0)
    model = ponder.load("music", "zoo:tones")
    own = zoo.entry("tones").student  # the teacher's own one-step student (zoo:tones-student)
    student = ponder.load("music", f"zoo:{own}") if own and zoo.entry(own).built else None
    if student is None:
        log(f"[music] zoo:{own} is not built: DITTO-2 uses the teacher's one-step x0 (build it with "
            f"`ponder zoo train {own}`)")
    clap = load_clap(zoo.folder("tones-clap"))
    judge = TonesJudge.from_folder(zoo.folder("tones-judge"))
    targets_per = QUICK_TARGETS if quick else TARGETS
    ditto_per = QUICK_DITTO_TARGETS if quick else DITTO_TARGETS
    ditto_opt = QUICK_OPT["ditto"] if quick else DITTO_OPT
    opt2 = QUICK_OPT["ditto-2"] if quick else OPT2
    curve_budgets = QUICK_OPT["curve"] if quick else OPT2_CURVE
    n_random = 2 if quick else N_RANDOM

    records: list[dict] = []  # one per (target, method)
    ditto_curves: dict[str, list[list[float]]] = {c: [] for c in CONTROLS}
    random_scores: dict[str, list[list[float]]] = {c: [] for c in CONTROLS}
    waves_for_fd: dict[str, list[np.ndarray]] = {"plain": [], "ditto-2": []}

    def record(target: Target, index: int, method: str, output, seconds: float, backward: int, nfe: int,
               budget=None) -> None:
        """One final output, measured as users get it (the clamped `Audio`): the control's loss and the
        bench's own measurement."""
        loss = -float(target.verifier.score(target.prompt, [output])[0])
        records.append({"control": target.control, "target": index, "method": method, "budget": budget,
                        "loss": loss, "measure": target.measure(_wave(output)), "seconds": seconds,
                        "backward": backward, "nfe": nfe})

    from ponder.modalities.music import tones

    seeds = iter(tones.seeds("heldout", 10 * targets_per * len(CONTROLS)))  # distinct clips for every target
    for control in CONTROLS:
        targets = _targets(control, targets_per, seeds, model.sample_rate, clap, judge)
        for index, target in enumerate(tqdm(targets, desc=f"[music] {control}", file=sys.stderr, leave=False)):
            seed = 1000 * CONTROLS.index(control) + index
            plain = noise_random(model, target.prompt, target.verifier, n=n_random, seed=seed, steps=STEPS)
            per_candidate = plain.compute.seconds / n_random
            scores = [c.score for c in plain.candidates]
            random_scores[control].append(scores)
            first = plain.candidates[0]
            record(target, index, "plain", first.output, per_candidate, 0, STEPS)
            res2 = ditto2(model, target.prompt, target.verifier, n=1, seed=seed, steps=STEPS, opt_steps=opt2, lr=LR,
                          student=student)
            best2 = res2.candidates[0]
            record(target, index, "ditto-2", best2.output, res2.compute.seconds, res2.compute.backward_passes,
                   res2.compute.nfe, budget=opt2)
            # random search at DITTO-2's wall time: the best of the first k candidates
            k = int(min(n_random, max(1, round(res2.compute.seconds / per_candidate))))
            pick = max(range(k), key=lambda i: scores[i])
            record(target, index, "random", plain.candidates[pick].output, per_candidate * k, 0, STEPS * k,
                   budget=k)
            if control != "text":
                waves_for_fd["plain"].append(_wave(first.output))
                waves_for_fd["ditto-2"].append(_wave(best2.output))
            if index < ditto_per:
                res = ditto(model, target.prompt, target.verifier, n=1, seed=seed, steps=STEPS, opt_steps=ditto_opt,
                            lr=LR)
                cand = res.candidates[0]
                record(target, index, "ditto", cand.output, res.compute.seconds, res.compute.backward_passes,
                       res.compute.nfe, budget=ditto_opt)
                ditto_curves[control].append([-v for v in cand.meta["score_history"]] + [res.compute.seconds])
                for budget in curve_budgets:
                    res_b = ditto2(model, target.prompt, target.verifier, n=1, seed=seed, steps=STEPS,
                                   opt_steps=budget, lr=LR, student=student)
                    cb = res_b.candidates[0]
                    record(target, index, "ditto-2", cb.output, res_b.compute.seconds,
                           res_b.compute.backward_passes, res_b.compute.nfe, budget=budget)
        log(f"[music] {control}: {len(targets)} targets done")

    rows = _summarise(records, ditto_per, opt2, ditto_opt, curve_budgets)
    fd = _frechet(judge, waves_for_fd, quick)
    rows.append(fd["row"])
    goals = _goals(rows, fd, quick)
    if plot_dir is not None:
        path = _plot(Path(plot_dir), records, ditto_curves, random_scores, ditto_per, opt2, ditto_opt)
        log(f"[music] plot: {path}")
    return {"rows": rows, "goals": goals}


def _summarise(records, ditto_per, opt2, ditto_opt, curve_budgets) -> list[dict]:
    rows = []
    for control in CONTROLS:
        mine = [r for r in records if r["control"] == control]
        for method, budget in [("plain", None), ("random", None), ("ditto-2", opt2)]:
            sel = [r for r in mine if r["method"] == method and (budget is None or r["budget"] == budget)]
            rows.append(_row(control, method, sel, "all", budget))
        subset = [r for r in mine if r["target"] < ditto_per]
        for method, budget in [("plain", None), ("ditto", ditto_opt)] + [("ditto-2", b) for b in
                                                                          (*curve_budgets, opt2)]:
            sel = [r for r in subset if r["method"] == method and (budget is None or r["budget"] == budget)]
            rows.append(_row(control, method, sel, "ditto-subset", budget))
    return rows


def _row(control, method, sel, targets, budget) -> dict:
    loss, loss_se = mean_se([r["loss"] for r in sel])
    measure, measure_se = mean_se([r["measure"] for r in sel])
    seconds = float(np.mean([r["seconds"] for r in sel])) if sel else float("nan")
    return {"control": control, "method": method, "budget": budget, "targets": targets, "n": len(sel),
            "loss": round(loss, 4), "loss_se": round(loss_se, 4), "measure": MEASURE[control],
            "value": round(measure, 4), "value_se": round(measure_se, 4), "seconds": round(seconds, 3),
            "rtf": round(seconds / 4.0, 3),
            "backward": round(float(np.mean([r["backward"] for r in sel])), 1) if sel else None,
            "nfe": round(float(np.mean([r["nfe"] for r in sel])), 1) if sel else None}


def _frechet(judge, waves, quick) -> dict:
    from ponder.modalities.music import tones

    plain, opt = np.stack(waves["plain"]), np.stack(waves["ditto-2"])
    count = max(len(plain), 8)
    reference = np.stack([c.waveform for c in tones.clips("heldout", count, start=FD_REFERENCE_START)])
    emb_ref = judge.embed(reference.astype(np.float32), mf.SR)
    fd_plain = judge.frechet_distance(judge.embed(plain.astype(np.float32), mf.SR), emb_ref)
    fd_opt = judge.frechet_distance(judge.embed(opt.astype(np.float32), mf.SR), emb_ref)
    row = {"control": "all but text", "method": f"plain {fd_plain:.3f} / ditto-2 {fd_opt:.3f}", "n": len(plain),
           "measure": "judge Frechet distance to held-out clips: ditto-2 / plain", "value": round(fd_opt / fd_plain, 4)}
    return {"row": row, "plain": fd_plain, "ditto-2": fd_opt}


def _find(rows, control, method, targets, budget=None):
    for r in rows:
        if r.get("control") == control and r.get("method") == method and r.get("targets") == targets and \
                (budget is None or r.get("budget") == budget):
            return r
    return None


def _goals(rows, fd, quick) -> list[dict]:
    goals = []
    opt2 = QUICK_OPT["ditto-2"] if quick else OPT2
    for control in CONTROLS:
        dit = _find(rows, control, "ditto", "ditto-subset")
        curve = sorted((r for r in rows if r["control"] == control and r["method"] == "ditto-2"
                        and r["targets"] == "ditto-subset"), key=lambda r: r["seconds"])
        reach = next((r for r in curve if r["loss"] <= dit["loss"]), None)
        speedup = dit["seconds"] / reach["seconds"] if reach else 0.0
        goals.append(goal(f"{control}: DITTO wall time / DITTO-2's to reach DITTO's final loss "
                          f"({dit['loss']:.4g}; 0 = never reached)", ">= 10", speedup, speedup >= 10))
    inten = _find(rows, "intensity", "ditto-2", "all", opt2)
    goals.append(goal("intensity: DITTO-2 seconds per 4 s clip / 4 s (real-time factor)", "< 1", inten["rtf"],
                      inten["rtf"] < 1))
    mel2, mel0 = _find(rows, "melody", "ditto-2", "all", opt2), _find(rows, "melody", "plain", "all")
    ratio = mel2["value"] / max(mel0["value"], 1e-9)
    goals.append(goal("melody: DITTO-2 pitch-class accuracy / plain's", ">= 2", ratio, ratio >= 2))
    goals.append(goal("intensity: DITTO-2 loudness correlation with the target", ">= 0.9", inten["value"],
                      inten["value"] >= 0.9))
    goals.append(goal("judge Frechet distance of DITTO-2 outputs / plain's", "<= 1.1", fd["ditto-2"] / fd["plain"],
                      fd["ditto-2"] <= 1.1 * fd["plain"]))
    return goals


def _plot(plot_dir: Path, records, ditto_curves, random_scores, ditto_per, opt2, ditto_opt) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(CONTROLS), 2, figsize=(10, 3 * len(CONTROLS)), squeeze=False)
    for row, control in enumerate(CONTROLS):
        subset = [r for r in records if r["control"] == control and r["target"] < ditto_per]
        plain = [r for r in subset if r["method"] == "plain"]
        per_candidate = float(np.mean([r["seconds"] for r in plain]))
        curves = np.array([c[:-1] for c in ditto_curves[control]])  # [targets, opt + 1]
        ditto_seconds = float(np.mean([c[-1] for c in ditto_curves[control]]))
        scores = np.array(random_scores[control][:ditto_per])  # [targets, N]
        best_k = -np.maximum.accumulate(scores, axis=1).mean(0)  # mean loss of the best of the first k
        budgets = sorted({r["budget"] for r in subset if r["method"] == "ditto-2"})
        d2 = [(np.mean([r["seconds"] for r in subset if r["method"] == "ditto-2" and r["budget"] == b]),
               np.mean([r["backward"] for r in subset if r["method"] == "ditto-2" and r["budget"] == b]),
               np.mean([r["loss"] for r in subset if r["method"] == "ditto-2" and r["budget"] == b])) for b in budgets]
        steps = np.arange(curves.shape[1])
        for col, (axis, xlabel) in enumerate(((0, "wall seconds per clip"), (1, "backward passes per clip"))):
            ax = axes[row][col]
            x_ditto = steps * ditto_seconds / max(1, steps[-1]) if axis == 0 else steps
            ax.plot(x_ditto, curves.mean(0), label=f"DITTO ({ditto_opt} Adam steps, {STEPS}-step chain)")
            ax.plot([p[axis] for p in d2], [p[2] for p in d2], "o-", label="DITTO-2 (zoo:tones-student surrogate)")
            k = np.arange(1, len(best_k) + 1)
            ax.plot(k * per_candidate if axis == 0 else np.zeros_like(k), best_k, "s--", label="random search")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{control} loss")
            if axis == 0:
                ax.set_xscale("log")
            if row == 0:
                ax.legend(fontsize=7)
    fig.suptitle("ponder bench music: control loss on the final waveform (zoo:tones, held-out targets)")
    fig.tight_layout()
    path = plot_dir / "music.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["run"]
