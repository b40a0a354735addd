"""Chimera draft: a light model over the target's last hidden states and the tokens so far.

Zeng et al. 2024, *Chimera: A Lossless Decoding Method for Accelerating Large Language Models Inference
by Fusing all Tokens*: a trigram encoder over the most recent token embeddings and a full-context fusion
block (one small causal transformer layer) over the target's last-layer hidden states feed the draft's
prediction of the tokens ahead. Drafting is
EAGLE-style autoregressive (Li, Wei, Zhang and Zhang 2024, *EAGLE: Speculative Sampling Requires
Rethinking Feature Uncertainty*): position j reads the pair (h_j, x_{j+1}) — the target's hidden state
there and the token after it — and predicts h_{j+1}, which the target's own LM head turns into logits
for x_{j+2}; the predicted state and the drafted token are fed back as the next pair. Trained with the
unrolled passes of `unrolled` (EAGLE-3's training-time test: pass d reads pass d-1's predictions, and
attends exactly what drafting step d attends), so training sees the draft's own fed-back states.

Position j's input: trigram(e(x_{j-1}), e(x_j), e(x_{j+1})) + W h_j (e: the target's token embeddings,
x_{-1} a "no token" row), then the fusion layer (pre-norm RoPE self-attention + SwiGLU MLP, causal over
every pair fed so far), a norm and a projection back to the target's hidden size.

A folder holds ``config.json`` (architectures ["ChimeraDraft"], sizes, the target's name),
``model.safetensors`` and ``card.json``. Decoders use it through the `HiddenStateDraft` protocol
(`begin` / `extend` / `rollback`, with `ChimeraState` as the per-batch draft cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ponder.errors import ModelLoadError

ARCHITECTURE = "ChimeraDraft"


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding. x: [B, nh, T, hd]; positions: [B, T] (integer positions)."""
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)  # [hd/2]
    angle = positions.to(torch.float32)[:, None, :, None] * freq  # [B, 1, T, hd/2]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class FusionLayer(nn.Module):
    """Chimera's full-context fusion: one pre-norm causal transformer layer (RoPE attention, SwiGLU)."""

    def __init__(self, width: int, num_heads: int, intermediate_size: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} must be a multiple of num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.attn_norm, self.mlp_norm = RMSNorm(width), RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.o = nn.Linear(width, width, bias=False)
        self.gate_up = nn.Linear(width, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, width, bias=False)

    def project(self, x: torch.Tensor, positions: torch.Tensor):
        """x [B, T, d] -> rotated q, k and v, each [B, nh, T, hd]."""
        b, t, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return rotate(q, positions), rotate(k, positions), v

    def finish(self, x: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Attend (q [B, nh, T, hd] over keys / values [B, nh, S, hd], mask [B or 1, 1, T, S] bool:
        True = may attend), then the MLP; returns the layer's output [B, T, d]."""
        b, t, d = x.shape
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [B, nh, T, hd]
        x = x + self.o(attn.transpose(1, 2).reshape(b, t, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


@dataclass
class ChimeraState:
    """The draft's cache for one batch: row r holds lengths[r] pairs (keys / values of the fusion layer)
    and its tokens x_0 .. x_{lengths[r]} (tokens[r, 1 + p] = x_p; tokens[r, 0] is the "no token" id)."""

    keys: torch.Tensor  # [B, nh, cap, hd]
    values: torch.Tensor  # [B, nh, cap, hd]
    tokens: torch.Tensor  # [B, cap + 2] long
    lengths: torch.Tensor  # [B] long: pairs held per row

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def grow(self, needed: int) -> None:
        """Make room for `needed` positions (doubling), keeping what is stored."""
        if needed <= self.capacity:
            return
        cap = max(needed, 2 * self.capacity)
        pad = cap - self.capacity
        self.keys = F.pad(self.keys, (0, 0, 0, pad))
        self.values = F.pad(self.values, (0, 0, 0, pad))
        self.tokens = F.pad(self.tokens, (0, pad))


class ChimeraDraft(nn.Module):
    """Trigram encoder + fusion layer over (target hidden state, next token) pairs -> the next hidden
    state and, through the target's LM head (a frozen copy), logits for the token after it."""

    modality = "text"

    def __init__(self, hidden_size: int, vocab_size: int, width: int = 256, num_heads: int = 4,
                 intermediate_size: int = 640, target: str = "", name: str = "chimera"):
        super().__init__()
        self.hidden_size, self.vocab_size, self.width = hidden_size, vocab_size, width
        self.num_heads, self.intermediate_size = num_heads, intermediate_size
        self.target, self.name = target, name
        self.none_token = vocab_size  # the embedding row read before position 0
        self.embed = nn.Embedding(vocab_size + 1, hidden_size)
        self.trigram = nn.Linear(3 * hidden_size, width)  # Chimera's trigram encoder
        self.feature_in = nn.Linear(hidden_size, width, bias=False)
        self.fusion = FusionLayer(width, num_heads, intermediate_size)
        self.norm = RMSNorm(width)
        self.feature_out = nn.Linear(width, hidden_size)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        self.lm_head.weight.requires_grad_(False)  # the target's LM head: the draft predicts its inputs

    def init_from_target(self, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor) -> None:
        """Copy the target's input embeddings [V, H] and LM head [V, H] (the latter stays frozen)."""
        with torch.no_grad():
            self.embed.weight[:self.vocab_size].copy_(embed_weight.detach().float())
            self.embed.weight[self.vocab_size].zero_()
            self.lm_head.weight.copy_(lm_head_weight.detach().float())

    # ---- the two halves of one position's computation ---------------------------------------------

    def _trigrams(self, trigram_ids: torch.Tensor) -> torch.Tensor:
        """trigram_ids [B, T, 3] (x_{j-1}, x_j, x_{j+1}) -> the trigram encoding [B, T, d]."""
        b, t, _ = trigram_ids.shape
        return self.trigram(self.embed(trigram_ids).reshape(b, t, 3 * self.hidden_size))

    def _inputs(self, hidden: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, H] and trigram encodings [B, T, d] -> the fusion layer's input [B, T, d]."""
        return grams + self.feature_in(hidden.to(self.feature_in.weight.dtype))

    def _outputs(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer output [B, T, d] -> (logits [B, T, V], predicted next hidden state [B, T, H])."""
        predicted = self.feature_out(self.norm(y))
        return self.lm_head(predicted), predicted

    # ---- training: the unrolled drafting passes -----------------------------------------------------

    def unrolled(self, hidden: torch.Tensor, tokens: torch.Tensor, depth: int, first: int = 0):
        """Every drafting step at every position at once (training-time test).

        hidden: the target's final hidden states [B, T, H]; tokens: the ids [B, T] fed there.
        Pass 1 reads the real pairs (h_j, x_{j+1}); pass d >= 2 reads at position j pass d-1's
        prediction of h_j and the true token after it, and (query j) attends pass 1's keys up to
        j-d+1 and pass m's key at j-d+m (m = 2..d): exactly what drafting step d attends when the
        target's states end at position j-d+1 and the drafted tokens so far were right.
        first: passes d >= 2 skip positions before it (no drafting starts there: the prompt), which
            changes nothing at positions j >= first + d - 1; their outputs there are zeros.
        Returns [(logits [B, T, V], predicted [B, T, H])] for d = 1..depth; pass d's position j
        predicts h_{j+1} and the token x_{j+2}.
        """
        b, t = tokens.shape
        none = torch.full((b, 1), self.none_token, dtype=tokens.dtype, device=tokens.device)
        padded = torch.cat([none, tokens, none], dim=1)  # [B, T+2]
        grams = self._trigrams(torch.stack([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]], dim=-1))  # [B, T, d]
        positions = torch.arange(t, device=tokens.device).expand(b, t)  # [B, T]
        j = torch.arange(t, device=tokens.device)
        keys, values, outs = [], [], []
        fed = hidden
        for d in range(1, depth + 1):
            s = 0 if d == 1 else first  # pass 1 runs everywhere: its keys are the context
            x = self._inputs(fed[:, s:], grams[:, s:])  # [B, T-s, d]: the tokens are the same in every pass
            q, k, v = self.fusion.project(x, positions[:, s:])
            keys.append(k)
            values.append(v)
            query = j[s:, None]
            blocks = [j[None, :] <= query - d + 1]  # pass 1: real states up to the last target one
            blocks += [j[None, first:] == query - d + m for m in range(2, d + 1)]  # one drafted pair each
            mask = torch.cat(blocks, dim=1)[None, None]  # [1, 1, T-s, T + (d-1)(T-first)]
            y = self.fusion.finish(x, q, torch.cat(keys, 2), torch.cat(values, 2), mask)
            logits, predicted = self._outputs(y)
            if s:
                logits, predicted = F.pad(logits, (0, 0, s, 0)), F.pad(predicted, (0, 0, s, 0))
            outs.append((logits, predicted))
            fed = torch.cat([hidden[:, :1] * 0, predicted[:, :-1]], dim=1)  # position j reads pass d's h_j
        return outs

    # ---- drafting: a cache of pairs, extended and rolled back (`HiddenStateDraft`) ------------------

    def begin(self, first_tokens: list[int]) -> ChimeraState:
        """An empty draft cache for len(first_tokens) rows; first_tokens[r] is row r's token x_0."""
        batch, cap = len(first_tokens), 64
        weight = self.feature_in.weight
        zeros = torch.zeros((batch, self.num_heads, cap, self.width // self.num_heads), dtype=weight.dtype,
                            device=weight.device)
        tokens = torch.full((batch, cap + 2), self.none_token, dtype=torch.long, device=weight.device)
        tokens[:, 1] = torch.as_tensor(first_tokens, dtype=torch.long)
        return ChimeraState(zeros, zeros.clone(), tokens, torch.zeros(batch, dtype=torch.long, device=weight.device))

    @torch.inference_mode()
    def extend(self, state: ChimeraState, hidden: torch.Tensor, next_tokens: torch.Tensor,
               counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Append row r's first counts[r] >= 1 pairs (hidden[r, i], next_tokens[r, i]) to the cache.

        hidden: target (or predicted) hidden states [B, W, H] at the row's next positions;
        next_tokens: [B, W] the token after each. Returns float32 (logits [B, V], predicted hidden
        state [B, H]) at each row's last new position: the draft for the token after next_tokens'
        last one, and the state to feed back with it.
        """
        b, w, _ = hidden.shape
        device = state.tokens.device
        counts_t = torch.as_tensor(counts, dtype=torch.long, device=device)  # [B]
        start = state.lengths  # [B]
        state.grow(int((start + w).max()))
        offsets = torch.arange(w, device=device)  # [W]
        slots = start[:, None] + offsets  # [B, W] positions of the new pairs
        state.tokens.scatter_(1, slots + 2, next_tokens.to(device))  # x_{p+1} sits at 1 + (p + 1)
        grams = torch.stack([state.tokens.gather(1, slots + i) for i in range(3)], dim=-1)  # [B, W, 3]
        x = self._inputs(hidden.to(device), self._trigrams(grams))
        q, k, v = self.fusion.project(x, slots)  # [B, nh, W, hd]
        index = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        state.keys.scatter_(2, index, k.to(state.keys.dtype))
        state.values.scatter_(2, index, v.to(state.values.dtype))
        span = int((start + w).max())
        mask = torch.arange(span, device=device)[None, None, :] <= slots[:, :, None]  # [B, W, S]
        y = self.fusion.finish(x, q, state.keys[:, :, :span], state.values[:, :, :span], mask[:, None])
        last = (counts_t - 1).clamp(min=0)  # [B]
        rows = torch.arange(b, device=device)
        logits, predicted = self._outputs(y[rows, last][:, None])  # [B, 1, V], [B, 1, H]
        state.lengths = start + counts_t
        return logits[:, 0].float(), predicted[:, 0].float()

    def rollback(self, state: ChimeraState, lengths: list[int] | torch.Tensor) -> None:
        """Row r keeps its first lengths[r] pairs (and tokens x_0 .. x_{lengths[r]})."""
        state.lengths = torch.as_tensor(lengths, dtype=torch.long, device=state.lengths.device).clone()

    # ---- folders ---------------------------------------------------------------------------------------

    def config(self) -> dict:
        return {"architectures": [ARCHITECTURE], "hidden_size": self.hidden_size, "vocab_size": self.vocab_size,
                "width": self.width, "num_heads": self.num_heads, "intermediate_size": self.intermediate_size,
                "target": self.target}

    def save(self, folder: Path, card: dict, dtype=torch.bfloat16) -> None:
        """Write config, safetensors weights (`dtype`) and card into `folder`, atomically (temp + rename)."""
        from ponder.modalities.text.medusa import save_module

        save_module(self, folder, self.config(), card, dtype)

    @classmethod
    def from_folder(cls, folder: str | Path, name: str | None = None) -> ChimeraDraft:
        """Load a draft written by `save` (float32)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = read_config(folder)
        if config is None:
            raise ModelLoadError(f"{str(folder)!r} holds no Chimera draft (config.json with architectures "
                                 f"[{ARCHITECTURE!r}])")
        try:
            draft = cls(int(config["hidden_size"]), int(config["vocab_size"]), width=int(config["width"]),
                        num_heads=int(config["num_heads"]), intermediate_size=int(config["intermediate_size"]),
                        target=str(config.get("target", "")), name=name or folder.name)
        except (KeyError, ValueError) as err:
            raise ModelLoadError(f"Chimera config in {str(folder)!r} is incomplete or invalid: {err}") from err
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ModelLoadError(f"Chimera folder {str(folder)!r} has no model.safetensors")
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        try:
            draft.load_state_dict(state)
        except RuntimeError as err:
            raise ModelLoadError(f"Chimera weights in {str(folder)!r} do not match its config.json: {err}") from err
        card = folder / "card.json"
        draft.card = json.loads(card.read_text()) if card.is_file() else {}
        return draft.eval()


def read_config(folder: Path) -> dict | None:
    """The folder's config.json when it describes a Chimera draft, else None."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return None
    return config if config.get("architectures") == [ARCHITECTURE] else None
