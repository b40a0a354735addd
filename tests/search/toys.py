"""A toy `SequenceModel` with enumerable outputs and exact likelihoods, and toy verifiers.

Tokens: 0 = "a", 1 = "b", 2 = EOS, 3 = BOS (never sampled). The next-token distribution depends
only on the previous token (a Markov chain), so the probability of any output is a product of
table entries and every strategy's rule can be checked by hand. Every token is one step.
"""

from __future__ import annotations

import itertools

import torch

NEG = -1e9


class ToyCache:
    def __init__(self):
        self.last = torch.zeros(0, dtype=torch.long)
        self.length = 0

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def reorder(self, index: torch.Tensor) -> None:
        self.last = self.last[index]


class ToyModel:
    """Markov chain over {a, b, EOS}; `table[prev]` is the next-token distribution (prev 3 = BOS)."""

    modality = "toy"
    eos_token_ids = frozenset({2})
    context_length = 64
    pad_token_id = 2
    name = "toy"

    def __init__(self, table):
        self.table = torch.tensor(table, dtype=torch.float64)  # [4, 3]
        self.calls = 0

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        probs = self.table[last]  # [..., 3]
        logits = torch.where(probs > 0, probs.clamp_min(1e-300).log(), torch.full_like(probs, NEG))
        return torch.cat([logits, torch.full((*logits.shape[:-1], 1), NEG, dtype=logits.dtype)], -1).float()

    def encode(self, prompt):
        return [3] + ["ab".index(ch) for ch in prompt if ch in "ab"]  # prompts in tests hold no a/b

    def decode(self, ids):
        return "".join("ab"[i] for i in ids if i < 2)

    def new_cache(self):
        return ToyCache()

    def prefill(self, prompt_ids, cache):
        self.calls += 1
        cache.last = torch.tensor([p[-1] for p in prompt_ids])
        cache.length = max(len(p) for p in prompt_ids)
        return self._logits(cache.last)  # [B, V]

    def forward(self, tokens, cache, attn_mask=None):
        self.calls += 1
        cache.last = tokens[:, -1]
        cache.length += tokens.shape[1]
        return self._logits(tokens)  # [B, T, V]

    def is_step_end(self, ids):
        return len(ids) >= 1

    def extract_answer(self, output):
        return output.count("a") if output else None

    def prob(self, text: str, eos: bool = False) -> float:
        """Exact probability of emitting `text` (then EOS when `eos`)."""
        prev, p = 3, 1.0
        for ch in text:
            tok = "ab".index(ch)
            p *= float(self.table[prev, tok])
            prev = tok
        return p * float(self.table[prev, 2]) if eos else p


class FnVerifier:
    """A process verifier from a function of the output text."""

    def __init__(self, fn, name="fn", process=True):
        self.fn, self.name = fn, name
        if not process:
            self.score_steps = None

    def score(self, prompt, outputs):
        return torch.tensor([float(self.fn(o)) for o in outputs])

    def score_steps(self, prompt, partials):
        return torch.tensor([float(self.fn(o)) for o in partials])


class OutcomeOnly:
    name = "outcome"

    def score(self, prompt, outputs):
        return torch.ones(len(outputs))


# no EOS: every output has exactly max_new_tokens letters (enumerable: 2^L outcomes)
NO_EOS = [[0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]
# with EOS: outputs end at varying lengths
WITH_EOS = [[0.5, 0.3, 0.2], [0.3, 0.4, 0.3], [0.5, 0.5, 0.0], [0.6, 0.4, 0.0]]


def all_strings(length: int) -> list[str]:
    return ["".join(t) for t in itertools.product("ab", repeat=length)]


def chi_square_pvalue(observed: list[int], expected: list[float]) -> float:
    """P(chi2_df >= statistic), df = cells - 1 (cells with expected count 0 must be observed 0)."""
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    df = sum(e > 0 for e in expected) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


__all__ = ["NO_EOS", "WITH_EOS", "FnVerifier", "OutcomeOnly", "ToyModel", "all_strings", "chi_square_pvalue"]
