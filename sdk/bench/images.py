"""`ponder bench images`: noise search vs more denoising steps at equal NFEs (a), and SJD vs plain AR (b).

(a) zoo:digits, every class 0..9 x several seeds, NFE budgets B in {8, 16, 32, 64, 128}:
* ``steps``      — the baseline: one sample per seed denoised in B DDIM steps (all the budget on steps);
* ``random``     — random search: B / K noises of K = SEARCH_STEPS steps, best by the verifier;
* ``zero-order`` — n * iterations = B / K samples of K steps around a pivot (lambda = STEP_SIZE);
* ``paths``      — search over paths (K steps, 2 branches, start K / 2, forward 1, backward 2) with the
                   most kept samples whose NFEs fit in B (none fit B = 8: that row is left out).
The verifier is zoo:digits-classifier (P(prompted class)); the judge is zoo:digits-judge (another
architecture, trained on a disjoint half of the data), used only here: judge accuracy = share of
images it labels as the prompted class; judge_prob = its mean probability of that class (finer
grained: the digits model is good, so accuracies sit near 1). Diversity = mean pairwise distance of
the returned images of one class across seeds (averaged over classes), next to the score to expose
verifier hacking. Goals: at equal NFEs (B >= 32), each search's judge accuracy (and judge_prob)
beats the steps baseline, the worst budget counting.

(b) `ponder.bench.images_ar.run_ar(quick)` when that module exists (SJD on zoo:digits-ar); its rows
carry ``part: "b"`` and its goals are appended.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ponder.bench import goal

BUDGETS = (8, 16, 32, 64, 128)
QUICK_BUDGETS = (8, 16)
SEEDS = 5  # seeds per class (full run: 50 images per cell)
SEARCH_STEPS = 4  # K: denoising steps of each searched sample
STEP_SIZE = 0.5  # zero-order lambda
PATHS = {"branches": 2, "forward": 1, "backward": 2}
METHODS = ("steps", "random", "zero-order", "paths")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout carries the --json report


def zero_order_shape(evaluations: int) -> tuple[int, int]:
    """(n, iterations) with n * iterations = `evaluations` samples: n grows with the budget (2, 4, 8)."""
    n = 2 if evaluations <= 4 else 4 if evaluations <= 16 else 8
    return n, max(1, evaluations // n)


def paths_n(budget: int, steps: int) -> int:
    """The most kept samples whose search-over-paths NFEs fit in `budget` (0 if none fit)."""
    from ponder.search.scaling.noise_paths import paths_nfe

    n = 0
    while paths_nfe(n + 1, PATHS["branches"], steps, steps // 2, PATHS["forward"], PATHS["backward"]) <= budget:
        n += 1
    return n


def _picks(model, verifier, method: str, prompt: str, budget: int, seeds: range) -> list[tuple] | None:
    """(returned candidate, NFEs, seconds, result) per seed of `method` at NFE `budget`; None when the
    method cannot fit the budget. The steps baseline draws its one-sample-per-seed images as one batch:
    candidate i (generator (0, i)) is seed i's sample, so no selection happens."""
    from ponder.search.scaling import noise_paths, noise_random, noise_zero_order

    k = SEARCH_STEPS
    if method == "steps":
        res = noise_random(model, prompt, verifier, n=len(seeds), seed=0, steps=budget)
        return [(c, budget, res.compute.seconds / len(seeds), res) for c in res.candidates]
    if method == "paths" and paths_n(budget, k) == 0:
        return None
    picks = []
    for seed in seeds:
        if method == "random":
            res = noise_random(model, prompt, verifier, n=budget // k, seed=seed, steps=k)
        elif method == "zero-order":
            n, iterations = zero_order_shape(budget // k)
            res = noise_zero_order(model, prompt, verifier, n=n, seed=seed, steps=k, iterations=iterations,
                                   step_size=STEP_SIZE)
        else:
            res = noise_paths(model, prompt, verifier, n=paths_n(budget, k), seed=seed, steps=k, start=k // 2,
                              **PATHS)
        picks.append((res.best, res.compute.nfe, res.compute.seconds, res))
    return picks


def run(quick: bool = False, plot_dir=None, log=_stderr) -> dict:
    import ponder
    from ponder.modalities.image.diversity import pixel_diversity as mean_pairwise_distance
    from ponder.modalities.image.verifiers import ClassifierVerifier

    model = ponder.load("image", "zoo:digits")
    verifier = ponder.load_verifier("image", "classifier")
    judge = ClassifierVerifier.from_folder(ponder.zoo.folder("digits-judge"), name="digits-judge")
    classes = ["3", "8"] if quick else list(model.labels)
    seeds = range(1 if quick else SEEDS)
    budgets = QUICK_BUDGETS if quick else BUDGETS
    rows, best_images = [], {}
    for budget in budgets:
        for method in METHODS:
            hits, probs, scores, nfes, seconds, per_class_div, images = 0, [], [], [], [], [], {}
            for prompt in classes:
                picks = _picks(model, verifier, method, prompt, budget, seeds)
                if picks is None:
                    break
                outs = [c.output for c, _, _, _ in picks]
                judged = judge.logits(outs).softmax(-1)  # [seeds, classes]
                hits += sum(judge.labels[i] == prompt for i in judged.argmax(-1).tolist())
                probs += judged[:, judge.class_index(prompt)].tolist()
                scores += [c.score for c, _, _, _ in picks]
                nfes += [nfe for _, nfe, _, _ in picks]
                seconds += [sec for _, _, sec, _ in picks]
                images[prompt] = (picks[0][0], picks[0][3])  # seed 0: its pick and its whole result
                div = mean_pairwise_distance(outs)
                if div is not None:
                    per_class_div.append(div)
            if not scores:
                log(f"[images] {method} cannot fit {budget} NFEs: row left out")
                continue
            best_images[(method, budget)] = images
            row = {"part": "a", "method": method, "nfe_budget": budget, "nfe_used": round(sum(nfes) / len(nfes), 2),
                   "images": len(scores), "judge_accuracy": round(hits / len(scores), 4),
                   "judge_prob": round(sum(probs) / len(probs), 4),
                   "verifier_score": round(sum(scores) / len(scores), 4),
                   "diversity": round(sum(per_class_div) / len(per_class_div), 4) if per_class_div else None,
                   "seconds": round(sum(seconds) / len(seconds), 4)}
            rows.append(row)
            log(f"[images] {row}")
    goals = _goals(rows, [b for b in budgets if b >= 32] or list(budgets[-1:]))
    ar_rows, ar_goals = _part_b(quick, log)
    if plot_dir is not None:
        out = Path(plot_dir)
        out.mkdir(parents=True, exist_ok=True)
        _plot(rows, out / "images.png")
        _grid(best_images, classes, max(budgets), out / "images-grid.png")
        log(f"[images] wrote {out / 'images.png'} and {out / 'images-grid.png'}")
    return {"rows": rows + ar_rows, "goals": goals + ar_goals}


def _goals(rows: list[dict], budgets: list[int]) -> list[dict]:
    """Per search method: judge accuracy (the issue's goal) and judge probability minus the steps
    baseline's at equal NFE, the worst over `budgets`."""
    goals = []
    for metric in ("judge_accuracy", "judge_prob"):
        value = {(r["method"], r["nfe_budget"]): r[metric] for r in rows}
        for method in METHODS[1:]:
            gaps = [value[(method, b)] - value[("steps", b)] for b in budgets
                    if (method, b) in value and ("steps", b) in value]
            if gaps:
                goals.append(goal(f"{method} {metric} minus more-steps at equal NFE (worst of budgets "
                                  f"{', '.join(map(str, budgets))})", "> 0", min(gaps), min(gaps) > 0))
    return goals


def _part_b(quick: bool, log) -> tuple[list[dict], list[dict]]:
    """B's SJD section, when `ponder.bench.images_ar` exists; else nothing (and a log line)."""
    try:
        from ponder.bench.images_ar import run_ar
    except ImportError:
        log("[images] part (b) skipped: ponder.bench.images_ar is not installed; part (a) only")
        return [], []
    from ponder.errors import ZooError

    try:
        out = run_ar(quick=quick, log=log)
    except ZooError as err:  # B's model not built in this checkout
        log(f"[images] part (b) skipped: {err}")
        return [], []
    return [{"part": "b", **r} for r in out["rows"]], list(out["goals"])


def _plot(rows: list[dict], path: Path) -> None:
    """Judge accuracy, verifier score and diversity against the NFE budget, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.8))
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        x = [r["nfe_budget"] for r in mine]
        style = {"marker": "o", "label": method, "linestyle": "--" if method == "steps" else "-"}
        axes[0].plot(x, [r["judge_accuracy"] for r in mine], **style)
        axes[1].plot(x, [r["judge_prob"] for r in mine], **style)
        axes[2].plot(x, [r["verifier_score"] for r in mine], **style)
        axes[3].plot(x, [r["diversity"] for r in mine], **style)
    for ax, title in zip(axes, ("judge accuracy (held-out ResNet)", "judge P(prompted class)",
                                "verifier score (ViT P(class))", "diversity (mean pairwise RMS distance)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE budget per image")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"zoo:digits: noise search (K={SEARCH_STEPS} steps per sample) vs more denoising steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(best_images: dict, classes: list[str], budget: int, path: Path) -> None:
    """Rows: classes; columns: each method's pick at `budget` (seed 0), then the first candidates of
    random search with their verifier scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if (m, budget) in best_images]
    extra = 6
    cols = len(methods) + extra
    fig, axes = plt.subplots(len(classes), cols, figsize=(1.3 * cols, 1.4 * len(classes)), squeeze=False)
    for i, prompt in enumerate(classes):
        picks = [best_images[(m, budget)][prompt][0] for m in methods]
        cells = [(f"{m}\n{c.score:.2f}", c.output) for m, c in zip(methods, picks)]
        if ("random", budget) in best_images:
            cands = best_images[("random", budget)][prompt][1].candidates[:extra]
            cells += [(f"cand {c.meta['index']}\n{c.score:.2f}", c.output) for c in cands]
        for j in range(cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(cells):
                ax.imshow(cells[j][1], cmap="gray", vmin=0, vmax=255)
                ax.set_title(cells[j][0], fontsize=6)
        axes[i][0].text(-6, 8, prompt, fontsize=12, ha="right", va="center")
    fig.suptitle(f"prompt per row; picks at {budget} NFE (verifier score), then random-search candidates",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

