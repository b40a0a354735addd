"""`ponder bench images-ditto`: DITTO and DITTO-2 noise optimisation on zoo:digits, against plain
sampling and random noise search at DITTO-2's wall time.

Every class 0..9 x SEEDS seeds (candidate i of a class is seed i, so every method starts from the same
noises); K = STEPS DDIM steps. The optimised score is zoo:digits-classifier's log-probability of the
prompted class (a `DifferentiableVerifier`); the judge (zoo:digits-judge, another architecture on a
disjoint half of the data, never seen by search) gives judge accuracy and judge P(class). Methods:

* ``plain``   — one sample per seed (no search);
* ``ditto``   — DITTO: OPT_STEPS Adam steps through the whole K-step chain (checkpointed);
* ``ditto-2`` — DITTO-2: OPT_STEPS_2 Adam steps through the teacher's one-step x0 prediction, then the
                K-step decode; and, when zoo:digits-student is built, the same through that distilled student;
* ``random``  — best of N noises by the same verifier, N picked so its wall time matches DITTO-2's.

Figures are means over images with their standard errors. Goals: DITTO raises the optimised
log-probability over plain by more than two standard errors; its judge P(class) is not lower than
plain's (the gain is not verifier hacking); DITTO-2 costs at most a fifth of DITTO's wall time and
reaches DITTO's log-probability (within two standard errors). The carry-over row pools every image:
the multi-step decode's log-probability gain over the surrogate's own gain.
"""

from __future__ import annotations

import math
import sys
import time

from ponder.bench import goal

SEEDS = 10
QUICK_SEEDS = 2
STEPS = 10
OPT_STEPS = 10
OPT_STEPS_2 = 20
LR = 0.1


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout carries the --json report


def mean_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def run(quick: bool = False, plot_dir=None, log=_stderr) -> dict:
    import ponder
    from ponder.modalities.image.verifiers import ClassifierVerifier
    from ponder.search.scaling import ditto, ditto2, noise_random

    model = ponder.load("image", "zoo:digits")
    verifier = ponder.load_verifier("image", "classifier", score="logprob")
    judge = ClassifierVerifier.from_folder(ponder.zoo.folder("digits-judge"), name="digits-judge")
    classes = ["3", "8"] if quick else list(model.labels)
    seeds = QUICK_SEEDS if quick else SEEDS
    per_method: dict[str, dict[str, list[float]]] = {}
    student = ponder.load("image", "zoo:digits-student") if ponder.zoo.entry("digits-student").built else None
    if student is None:
        log("[images-ditto] zoo:digits-student is not built: DITTO-2 runs with the teacher's one-step x0 only")

    def record(method: str, prompt: str, outputs: list, scores: list[float], seconds: float, backward: int, nfe: int):
        judged = judge.logits(outputs).softmax(-1)  # [images, classes]
        label = judge.class_index(prompt)
        cell = per_method.setdefault(method, {"score": [], "judge_prob": [], "judge_hit": [], "seconds": [],
                                              "backward": [], "nfe": []})
        cell["score"] += scores
        cell["judge_prob"] += judged[:, label].tolist()
        cell["judge_hit"] += [float(i == label) for i in judged.argmax(-1).tolist()]
        cell["seconds"] += [seconds / len(outputs)] * len(outputs)
        cell["backward"] += [backward / len(outputs)] * len(outputs)
        cell["nfe"] += [nfe / len(outputs)] * len(outputs)

    surrogate_gain, multi_gain, plain_seconds, ditto2_seconds = 0.0, 0.0, 0.0, 0.0
    for prompt in classes:
        start = time.perf_counter()
        res = ditto(model, prompt, verifier, n=seeds, seed=0, steps=STEPS, opt_steps=OPT_STEPS, lr=LR)
        record("ditto", prompt, [c.output for c in res.candidates], [c.score for c in res.candidates],
               time.perf_counter() - start, res.compute.backward_passes, res.compute.nfe)
        res2 = ditto2(model, prompt, verifier, n=seeds, seed=0, steps=STEPS, opt_steps=OPT_STEPS_2, lr=LR)
        record("ditto-2", prompt, [c.output for c in res2.candidates], [c.score for c in res2.candidates],
               res2.compute.seconds, res2.compute.backward_passes, res2.compute.nfe)
        if student is not None:  # the distilled student as the surrogate, when the zoo ships it
            res3 = ditto2(model, prompt, verifier, n=seeds, seed=0, steps=STEPS, opt_steps=OPT_STEPS_2, lr=LR,
                          student=student)
            record("ditto-2 (zoo:digits-student)", prompt, [c.output for c in res3.candidates],
                   [c.score for c in res3.candidates], res3.compute.seconds, res3.compute.backward_passes,
                   res3.compute.nfe)
        surrogate_gain += sum(c.meta["surrogate_after"] - c.meta["surrogate_before"] for c in res2.candidates)
        multi_gain += sum(c.meta["score_after"] - c.meta["score_before"] for c in res2.candidates)
        plain = noise_random(model, prompt, verifier, n=seeds, seed=0, steps=STEPS)  # candidate i = seed i
        record("plain", prompt, [c.output for c in plain.candidates], [c.score for c in plain.candidates],
               plain.compute.seconds, 0, plain.compute.nfe)
        plain_seconds += plain.compute.seconds
        ditto2_seconds += res2.compute.seconds
        log(f"[images-ditto] class {prompt}: ditto, ditto-2, plain done")
    # random search gets DITTO-2's wall time per image, one N for every class
    n_random = max(2, round(ditto2_seconds / plain_seconds))
    method = f"random (N={n_random})"
    for prompt in classes:
        outputs, scores, seconds, nfe = [], [], 0.0, 0
        for seed in range(seeds):
            best = noise_random(model, prompt, verifier, n=n_random, seed=1000 + seed, steps=STEPS)
            outputs.append(best.best.output)
            scores.append(best.best.score)
            seconds += best.compute.seconds
            nfe += best.compute.nfe
        record(method, prompt, outputs, scores, seconds, 0, nfe)
    log(f"[images-ditto] {method} done")

    rows = []
    for method, cell in per_method.items():
        score, score_se = mean_se(cell["score"])
        prob, prob_se = mean_se(cell["judge_prob"])
        hit, hit_se = mean_se(cell["judge_hit"])
        rows.append({"method": method, "images": len(cell["score"]), "steps": STEPS,
                     "logprob": round(score, 4), "logprob_se": round(score_se, 4),
                     "judge_prob": round(prob, 4), "judge_prob_se": round(prob_se, 4),
                     "judge_accuracy": round(hit, 4), "judge_accuracy_se": round(hit_se, 4),
                     "seconds_per_image": round(sum(cell["seconds"]) / len(cell["seconds"]), 4),
                     "backward_per_image": round(sum(cell["backward"]) / len(cell["backward"]), 2),
                     "nfe_per_image": round(sum(cell["nfe"]) / len(cell["nfe"]), 1)})
    by = {r["method"]: r for r in rows}
    plain, ditto_row, ditto2_row = by["plain"], by["ditto"], by["ditto-2"]
    gain = ditto_row["logprob"] - plain["logprob"]
    gain_se = math.hypot(ditto_row["logprob_se"], plain["logprob_se"])
    goals = [
        goal("DITTO logprob gain over plain, in standard errors", "> 2", gain / gain_se if gain_se else float("inf"),
             gain > 2 * gain_se),
        goal("DITTO judge P(class) - plain's (held-out judge)", ">= 0", ditto_row["judge_prob"] - plain["judge_prob"],
             ditto_row["judge_prob"] >= plain["judge_prob"]),
        goal("DITTO-2 wall time / DITTO's", "<= 0.2", ditto2_row["seconds_per_image"] / ditto_row["seconds_per_image"],
             ditto2_row["seconds_per_image"] <= 0.2 * ditto_row["seconds_per_image"]),
    ]
    goals.append(goal("DITTO-2 logprob - DITTO's (reaches DITTO's optimum)", ">= -2 SE",
                      ditto2_row["logprob"] - ditto_row["logprob"],
                      ditto2_row["logprob"] >= ditto_row["logprob"] - 2 * math.hypot(ditto2_row["logprob_se"],
                                                                                     ditto_row["logprob_se"])))
    student_row = by.get("ditto-2 (zoo:digits-student)")
    if student_row is not None:  # the distilled student as DITTO-2's surrogate
        goals.append(goal("DITTO-2 (student) wall time / DITTO's", "<= 0.2",
                          student_row["seconds_per_image"] / ditto_row["seconds_per_image"],
                          student_row["seconds_per_image"] <= 0.2 * ditto_row["seconds_per_image"]))
        goals.append(goal("DITTO-2 (student) logprob - DITTO's (reaches DITTO's optimum)", ">= -2 SE",
                          student_row["logprob"] - ditto_row["logprob"],
                          student_row["logprob"] >= ditto_row["logprob"] - 2 * math.hypot(
                              student_row["logprob_se"], ditto_row["logprob_se"])))
    rows.append({"method": "ditto-2 carry-over: multi-step log-prob gain / surrogate gain, pooled over images",
                 "value": round(multi_gain / surrogate_gain, 4) if surrogate_gain > 0 else None,
                 "surrogate_gain_per_image": round(surrogate_gain / (len(classes) * seeds), 4),
                 "multi_step_gain_per_image": round(multi_gain / (len(classes) * seeds), 4)})
    return {"rows": rows, "goals": goals}
