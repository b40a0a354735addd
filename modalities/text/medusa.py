"""Medusa heads: tiny extra decoding heads over a target's last hidden state.

Cai, Li, Geng, Peng, Lee, Chen and Dao 2024, *Medusa: Simple LLM Inference Acceleration Framework
with Multiple Decoding Heads*. Head k (k = 1..K) reads the target's final hidden state h_t — the one
its LM head turns into token t+1 — and predicts token t+k+1: logits_k = W_k (SiLU(U_k h_t) + h_t),
one residual block and a vocabulary projection per head (Medusa-1: W_k starts from the LM head and
the target stays frozen). A folder holds ``config.json`` (architectures ["MedusaHeads"], sizes, the
target's name), ``model.safetensors`` and ``card.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ponder.errors import ModelLoadError

ARCHITECTURE = "MedusaHeads"


def save_module(module: nn.Module, folder: Path, config: dict, card: dict, dtype=torch.bfloat16) -> None:
    """Write `config`, the module's safetensors weights (`dtype`) and `card` into `folder`, atomically
    (a temp folder, then renames): the head folders (Medusa, Chimera) share this layout."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()},
              str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        os.replace(child, folder / child.name)
    tmp.rmdir()


class MedusaHeads(nn.Module):
    """K heads: hidden [B, H] -> logits [B, K, V] for tokens t+2 .. t+K+1."""

    modality = "text"

    def __init__(self, hidden_size: int, vocab_size: int, num_heads: int, target: str = "", name: str = "medusa"):
        super().__init__()
        self.hidden_size, self.vocab_size, self.num_heads = hidden_size, vocab_size, num_heads
        self.target, self.name = target, name
        self.blocks = nn.ModuleList([nn.Linear(hidden_size, hidden_size) for _ in range(num_heads)])
        self.out = nn.ModuleList([nn.Linear(hidden_size, vocab_size, bias=False) for _ in range(num_heads)])
        for block in self.blocks:  # the residual block starts as the identity (Medusa's zero init)
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def init_from_lm_head(self, lm_head_weight: torch.Tensor) -> None:
        """Start every head's projection from the target's LM head [V, H] (Medusa-1)."""
        for out in self.out:
            out.weight.data.copy_(lm_head_weight.detach().float())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., K, V]."""
        hidden = hidden.to(self.out[0].weight.dtype)
        return torch.stack([out(nn.functional.silu(block(hidden)) + hidden)
                            for block, out in zip(self.blocks, self.out)], dim=-2)

    @torch.inference_mode()
    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """What decoders call: hidden [B, H] -> float32 logits [B, K, V], no autograd."""
        return self.forward(hidden).float()

    def config(self) -> dict:
        return {"architectures": [ARCHITECTURE], "hidden_size": self.hidden_size, "vocab_size": self.vocab_size,
                "num_heads": self.num_heads, "target": self.target}

    def save(self, folder: Path, card: dict, dtype=torch.bfloat16) -> None:
        """Write config, safetensors weights (`dtype`) and card into `folder`, atomically (temp + rename)."""
        save_module(self, folder, self.config(), card, dtype)

    @classmethod
    def from_folder(cls, folder: str | Path, name: str | None = None) -> MedusaHeads:
        """Load heads written by `save` (float32)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = read_config(folder)
        if config is None:
            raise ModelLoadError(f"{str(folder)!r} holds no Medusa heads (config.json with architectures "
                                 f"[{ARCHITECTURE!r}])")
        heads = cls(int(config["hidden_size"]), int(config["vocab_size"]), int(config["num_heads"]),
                    target=str(config.get("target", "")), name=name or folder.name)
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ModelLoadError(f"Medusa folder {str(folder)!r} has no model.safetensors")
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        try:
            heads.load_state_dict(state)
        except RuntimeError as err:
            raise ModelLoadError(f"Medusa weights in {str(folder)!r} do not match its config.json: {err}") from err
        card = folder / "card.json"
        heads.card = json.loads(card.read_text()) if card.is_file() else {}
        return heads.eval()


def read_config(folder: Path) -> dict | None:
    """The folder's config.json when it describes Medusa heads, else None."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return None
    return config if config.get("architectures") == [ARCHITECTURE] else None
