"""Verifiers for text: the exact arith checker and learned outcome / process verifiers.

A learned verifier folder holds a *ForSequenceClassification (outcome) or *ForTokenClassification
(process) model, or a `verifier_head.VerifierHead` on a frozen causal LM (the zoo's orm / prm).

Every verifier has `score(prompt, outputs) -> Tensor[N]` (higher is better); the process verifier
also has `score_steps(prompt, partials) -> Tensor[N]` and `step_scores(prompt, output)`, reading
one score at the end of every line (a step).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ponder.errors import ConfigError, ModelLoadError
from ponder.modalities.text import arith

AGGREGATIONS = ("min", "last", "prod", "mean")


class ExactArithVerifier:
    """1.0 when the completion's ``A:`` line states the prompt's true answer, else 0.0 (no model)."""

    name = "exact"

    def score(self, prompt: str, outputs: Sequence[str]) -> torch.Tensor:
        return torch.tensor([float(arith.is_correct(prompt, o)) for o in outputs])  # [N]


def _load(path: str | Path, auto_class: str):
    import transformers
    from transformers import AutoTokenizer

    from ponder.modalities.text.verifier_head import is_head_folder, load_head

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"verifier folder {str(folder)!r} has no config.json")
    if is_head_folder(folder):  # a head on a frozen causal LM (the zoo's arith verifiers)
        return load_head(folder)
    try:
        model = getattr(transformers, auto_class).from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a verifier from {str(folder)!r}: {err}") from err
    return model, tokenizer


def encode_steps(tokenizer, prompt: str, output: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + output, and the index of the newline ending each non-empty line
    (a step). Blank lines are dropped, as `arith.step_labels` drops them, so ends and labels align."""
    ids, ends = list(tokenizer(prompt)["input_ids"]), []
    for line in output.split("\n"):
        if not line.strip():
            continue
        ids += tokenizer(line + "\n", add_special_tokens=False)["input_ids"]
        ends.append(len(ids) - 1)
    return ids, ends


def pad_right(tokenizer, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [N, T] and attention mask [N, T] of token id rows."""
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _batch(tokenizer, prompt: str, outputs: Sequence[str]):
    """Padded ids [N, T] and mask [N, T] of prompt + each output, plus each output's step ends."""
    encoded = [encode_steps(tokenizer, prompt, out) for out in outputs]
    ids, mask = pad_right(tokenizer, [e[0] for e in encoded])
    return ids, mask, [e[1] for e in encoded]


def _distinct(outputs: Sequence[str]) -> tuple[list[str], list[int]]:
    """(each distinct output once, in first-seen order; where each output's copy is): step searches
    hand the verifier many identical partials (beams duplicated, steps sampled alike), scored once."""
    first: dict[str, int] = {}
    where = [first.setdefault(out, len(first)) for out in outputs]
    return list(first), where


class OutcomeVerifier:
    """A learned outcome verifier (ORM): sigmoid of a sequence-classification logit."""

    name = "orm"

    def __init__(self, model, tokenizer, name: str = "orm"):
        self.model, self.tokenizer, self.name = model, tokenizer, name

    @classmethod
    def from_folder(cls, path: str | Path, name: str = "orm") -> OutcomeVerifier:
        return cls(*_load(path, "AutoModelForSequenceClassification"), name=name)

    @torch.inference_mode()
    def score(self, prompt: str, outputs: Sequence[str]) -> torch.Tensor:
        if not outputs:
            return torch.zeros(0)
        distinct, where = _distinct(outputs)
        ids, mask, _ = _batch(self.tokenizer, prompt, distinct)
        scores = torch.sigmoid(self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float())  # [N']
        return scores[torch.tensor(where)]  # [N]


class ProcessVerifier:
    """A learned process verifier (PRM): one score per step (line), aggregated per output.

    aggregate: "min" (weakest step, the usual choice), "last", "prod" or "mean".
    """

    name = "prm"

    def __init__(self, model, tokenizer, name: str = "prm", aggregate: str = "min"):
        if aggregate not in AGGREGATIONS:
            raise ConfigError(f"aggregate {aggregate!r} is not allowed; use one of {', '.join(AGGREGATIONS)}")
        self.model, self.tokenizer, self.name, self.aggregate = model, tokenizer, name, aggregate

    @classmethod
    def from_folder(cls, path: str | Path, name: str = "prm", aggregate: str = "min") -> ProcessVerifier:
        return cls(*_load(path, "AutoModelForTokenClassification"), name=name, aggregate=aggregate)

    @torch.inference_mode()
    def step_scores_batch(self, prompt: str, outputs: Sequence[str]) -> list[list[float]]:
        """Per output, the score of every non-empty line (step) it contains."""
        if not outputs:
            return []
        distinct, where = _distinct(outputs)
        ids, mask, ends = _batch(self.tokenizer, prompt, distinct)
        probs = torch.sigmoid(self.model(input_ids=ids, attention_mask=mask).logits[..., 0].float())  # [N', T]
        scores = [probs[i, e].tolist() for i, e in enumerate(ends)]
        return [list(scores[i]) for i in where]

    def step_scores(self, prompt: str, output: str) -> list[float]:
        return self.step_scores_batch(prompt, [output])[0]

    def _reduce(self, scores: list[float]) -> float:
        if not scores:
            return 0.5  # no step yet: no evidence either way
        t = torch.tensor(scores)
        return float({"min": t.min(), "last": t[-1], "prod": t.prod(), "mean": t.mean()}[self.aggregate])

    def score(self, prompt: str, outputs: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self._reduce(s) for s in self.step_scores_batch(prompt, outputs)])  # [N]

    def score_steps(self, prompt: str, partials: Sequence[str]) -> torch.Tensor:
        """Scores of unfinished outputs: only completed lines (ending in a newline) count."""
        complete = [p[: p.rfind("\n") + 1] for p in partials]
        return self.score(prompt, complete)


def load_verifier(spec: str | Path, *, model=None, **options):
    """A text verifier by name or folder (what ``--verifier`` names for text).

    Names: ``exact`` (the arith checker), ``orm`` / ``prm`` (zoo verifiers, ``zoo:`` optional),
    ``self`` (the generator's own normalised likelihood; needs `model`). A folder holding a
    sequence-classification model loads as an outcome verifier; a token-classification model as a
    process verifier.
    """
    import json

    from ponder.modalities.text.spec import SPEC

    key = str(spec).removeprefix("zoo:")
    if key == "self":
        if model is None:
            raise ConfigError("the self verifier scores with the generating model; pass model=")
        from ponder.search.verifiers import SelfEvaluation

        return SelfEvaluation(model)
    if key == "exact":
        return ExactArithVerifier()
    zoo = {e.name: e for e in SPEC.zoo}
    if key in ("orm", "prm") and not Path(str(spec)).is_dir():
        cls = OutcomeVerifier if key == "orm" else ProcessVerifier
        return cls.from_folder(zoo[key].weights(), name=key, **options)
    folder = Path(str(spec))
    if not (folder / "config.json").is_file():
        raise ConfigError(f"unknown verifier {str(spec)!r}; use one of {', '.join(SPEC.verifiers)}, "
                          "a comma-separated list of them, or a local verifier folder")
    config = json.loads((folder / "config.json").read_text())
    archs = config.get("architectures") or [""]
    if archs[0] == "PonderVerifierHead":
        cls = ProcessVerifier if config.get("kind") == "process" else OutcomeVerifier
        return cls.from_folder(folder, name=folder.name, **options)
    if archs[0].endswith("ForTokenClassification"):
        return ProcessVerifier.from_folder(folder, name=folder.name, **options)
    if archs[0].endswith("ForSequenceClassification"):
        return OutcomeVerifier.from_folder(folder, name=folder.name, **options)
    raise ConfigError(f"verifier folder {str(folder)!r} holds a {archs[0] or 'model of unknown class'}; "
                      "expected a *ForSequenceClassification (outcome) or *ForTokenClassification (process)")
