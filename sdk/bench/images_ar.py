"""`ponder bench images`, part (b): Speculative Jacobi Decoding vs plain AR sampling on zoo:digits-ar.

Every side samples the same class prompts at temperature 1 (the model's own distribution, which
SJD and MC-SJD keep exactly). Reported per decoder, all measured in this run:

* model steps per image: forwards of the model per image (prefill included; plain AR: 64), from
  a batched run over every class (a row's steps do not depend on its batch);
* wall time per image at batch 1, sides interleaved, best of the repeats (machine-load drift hits
  every side alike), one intra-op thread; ratio = plain seconds / decoder seconds;
* held-out accuracy: `zoo:digits-judge` (trained on a disjoint half of the digits, never used by
  search) labels the batched run's images; the share labelled as their prompt's class, with its
  standard error.
"""

from __future__ import annotations

import math
import time

import torch

from ponder.bench import goal

DRAFT_LEN = 16  # Jacobi window: tokens guessed per forward (a quarter of the 64-token image)
INIT = "horizon"  # spatial-locality guesses: the token one image row above
DECODERS = ("plain", "sjd", "mc-sjd")


def run_ar(quick: bool = False, model_spec: str = "zoo:digits-ar", log=None) -> dict:
    """SJD and MC-SJD against plain AR on zoo:digits-ar; returns {"rows": [...], "goals": [...]}.

    quick: 5 images per class and 5 batch-1 timings (a smoke run); otherwise 100 per class and 20
    timings, best of 3 interleaved repeats."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick, model_spec, log or (lambda _msg: None))
    finally:
        torch.set_num_threads(threads)


def _sample(model, decoder: str, labels: list[int], seed: int, batch: int = 250) -> tuple[list[list[int]], float]:
    """Sample one image per label in batches; returns (token rows, mean model steps per image)."""
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.core import candidate_generators
    from ponder.search.decoding import get_decoder

    fn = get_decoder(decoder)
    options = {} if decoder == "plain" else {"draft_len": DRAFT_LEN, "init": INIT}
    rows, steps = [], 0
    for start in range(0, len(labels), batch):
        chunk = labels[start:start + batch]
        stats: dict = {}
        extra = {} if decoder == "plain" else {"stats": stats}
        out = fn(model, [model.encode(c) for c in chunk], sampling=SamplingParams(),
                 max_new_tokens=model.tokens_per_image,
                 generators=candidate_generators(seed, range(start, start + len(chunk))), **options, **extra)
        rows += out.tokens
        # plain: a prefill and one forward per further token; Jacobi decoders: a prefill + each row's steps
        steps += len(chunk) * model.tokens_per_image if decoder == "plain" else len(chunk) + stats["row_steps"]
    return rows, steps / len(labels)


def _latency(model, labels: list[int], repeats: int) -> dict[str, float]:
    """Best seconds per image at batch 1 for each decoder; sides interleaved, a warm-up first."""
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.core import candidate_generators
    from ponder.search.decoding import get_decoder

    def side(name):
        fn = get_decoder(name)
        options = {} if name == "plain" else {"draft_len": DRAFT_LEN, "init": INIT}

        def once():
            for i, c in enumerate(labels):
                fn(model, [model.encode(c)], sampling=SamplingParams(), max_new_tokens=model.tokens_per_image,
                   generators=candidate_generators(1, [i]), **options)
        return once

    sides = {name: side(name) for name in DECODERS}
    for once in sides.values():
        once()
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(repeats):
        for name, once in sides.items():
            start = time.perf_counter()
            once()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: best[name] / len(labels) for name in sides}


def _run(quick: bool, model_spec: str, log) -> dict:
    import ponder
    from ponder import zoo
    from ponder.modalities.image.train import classifier_accuracy, load_classifier

    model = ponder.load("image", model_spec)
    judge, _ = load_classifier(zoo.folder("digits-judge"))
    classes = len(model.class_names)
    per_class, timed, repeats = (5, 5, 1) if quick else (100, 20, 3)
    labels = [c for c in range(classes) for _ in range(per_class)]
    measured = {}
    for name in DECODERS:
        start = time.perf_counter()
        rows, steps = _sample(model, name, labels, seed=0)
        acc = classifier_accuracy(judge, model.images(rows), torch.tensor(labels))
        measured[name] = {"steps": steps, "accuracy": acc}
        log(f"[images-ar] {name}: {steps:.2f} model steps per image, judge accuracy {acc:.3f} "
            f"({time.perf_counter() - start:.1f}s)")
    latency = _latency(model, [c % classes for c in range(timed)], repeats)
    base = measured["plain"]
    rows = []
    for name in DECODERS:
        m = measured[name]
        se = math.sqrt(m["accuracy"] * (1 - m["accuracy"]) / len(labels) +
                       base["accuracy"] * (1 - base["accuracy"]) / len(labels))
        rows.append({"decoder": name, "model": model_spec, "draft_len": None if name == "plain" else DRAFT_LEN,
                     "init": None if name == "plain" else INIT, "images": len(labels),
                     "steps_per_image": round(m["steps"], 2), "step_ratio": round(base["steps"] / m["steps"], 3),
                     "seconds_per_image_b1": round(latency[name], 5),
                     "wall_ratio_b1": round(latency["plain"] / latency[name], 3),
                     "judge_accuracy": round(m["accuracy"], 4),
                     "accuracy_minus_plain": round(m["accuracy"] - base["accuracy"], 4),
                     "accuracy_diff_se": round(se, 4), "timed_images": timed, "lossy": False})
    by = {r["decoder"]: r for r in rows}
    sjd, mc = by["sjd"], by["mc-sjd"]
    goals = [
        goal("SJD: plain / SJD model steps per image", ">= 2.0", sjd["step_ratio"], sjd["step_ratio"] >= 2.0),
        goal("SJD: plain / SJD wall time per image, batch 1", ">= 1.6", sjd["wall_ratio_b1"],
             sjd["wall_ratio_b1"] >= 1.6),
        goal("MC-SJD: plain / MC-SJD model steps per image", ">= 3.0", mc["step_ratio"], mc["step_ratio"] >= 3.0),
        goal("SJD: |judge accuracy - plain's| (held-out judge)", "<= 0.02", abs(sjd["accuracy_minus_plain"]),
             abs(sjd["accuracy_minus_plain"]) <= 0.02),
        goal("MC-SJD: |judge accuracy - plain's| (held-out judge)", "<= 0.02", abs(mc["accuracy_minus_plain"]),
             abs(mc["accuracy_minus_plain"]) <= 0.02),
    ]
    return {"rows": rows, "goals": goals}


__all__ = ["run_ar"]
