"""Self-evaluation: the generator's own normalised likelihood as a verifier (no extra model).

Sources: Liu et al. 2025, "Bag of Tricks for Inference-time Computation of LLM Reasoning"
(self-evaluation among reward types); Zhou et al. 2025 (RPC: the model's internal probability,
i.e. inverse perplexity, as the signal of a reasoning path).

Rule: score(prompt, output) = ``exp(mean over the output's tokens of log p_model(token | prefix))``,
the inverse perplexity, in (0, 1]; an empty output scores 0. Untempered model distribution. Partial
outputs are scored the same way, so it is also a process verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ponder.search.core.capabilities import OutputEncoder, PaddedModel


class SelfEvaluation:
    """Inverse perplexity of each output under `model` (a `SequenceModel`)."""

    def __init__(self, model, name: str = "self"):
        self.model, self.name = model, name

    def _output_ids(self, prompt: Any, output: Any, prompt_ids: list[int]) -> list[int]:
        if isinstance(self.model, OutputEncoder):
            return list(self.model.encode_output(prompt, output))
        if not output:
            return []
        full = list(self.model.encode(prompt + output))
        if full[: len(prompt_ids)] == prompt_ids:
            return full[len(prompt_ids):]
        # the tokenizer merged across the boundary: score the output's own tokens after the prompt
        own = list(self.model.encode(output))
        return own[1:] if own and prompt_ids and own[0] == prompt_ids[0] else own  # drop a BOS

    @torch.inference_mode()
    def mean_logprobs(self, prompt: Any, outputs: Sequence[Any]) -> list[float | None]:
        """Mean token log-probability per output (None for an empty output)."""
        from ponder.search.decoding.outputs import prefill_shared

        prompt_ids = list(self.model.encode(prompt))
        rows = [self._output_ids(prompt, o, prompt_ids) for o in outputs]
        live = [i for i, r in enumerate(rows) if r]
        out: list[float | None] = [None] * len(rows)
        if not live:
            return out
        width = max(len(rows[i]) for i in live)
        pad = self.model.pad_token_id if isinstance(self.model, PaddedModel) else 0
        ids = torch.full((len(live), width), pad, dtype=torch.long)  # [B, L] right-padded
        for b, i in enumerate(live):
            ids[b, : len(rows[i])] = torch.tensor(rows[i])
        cache = self.model.new_cache()
        first = prefill_shared(self.model, [prompt_ids] * len(live), cache)  # [B, V]
        logits = [first[:, None]]
        if width > 1:
            logits.append(self.model.forward(ids[:, :-1], cache))  # [B, L-1, V]
        logp = torch.log_softmax(torch.cat(logits, 1).float(), -1).gather(2, ids[..., None])[..., 0]  # [B, L]
        for b, i in enumerate(live):
            out[i] = float(logp[b, : len(rows[i])].mean())
        return out

    def score(self, prompt: Any, outputs: Sequence[Any]) -> torch.Tensor:
        if not outputs:
            return torch.zeros(0)
        return torch.tensor([0.0 if m is None else float(torch.tensor(m).exp())
                             for m in self.mean_logprobs(prompt, outputs)])

    def score_steps(self, prompt: Any, partials: Sequence[Any]) -> torch.Tensor:
        return self.score(prompt, partials)


__all__ = ["SelfEvaluation"]
