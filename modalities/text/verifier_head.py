"""A verifier head on a frozen causal LM: the zoo's arith PRM and ORM.

Checking ``a op b = c`` is as hard as computing it, and a verifier small enough to ship cannot
learn arithmetic the target already knows (measured: a 4-layer verifier started from the target's
lower half ranked samples within a problem at AUROC 0.52, chance). So the verifier reads the frozen
target instead: per token x_t, its last hidden state h_t, the log-probability the target gave x_t,
the entropy and the top log-probability of that distribution, whether x_t was its argmax, and the
lowest log-probability so far on the line. A projection and one causal
transformer layer turn these into one logit per token; a process head (PRM) is read at the newline
ending each step, an outcome head (ORM) at the last token. Only the head ships (a few hundred KB);
the folder names its target (a zoo name or a folder), which loads alongside.

A folder holds ``config.json`` (architectures ["PonderVerifierHead"], `kind` "process" or
"outcome", the head's sizes, `target`), ``model.safetensors`` (the head), the target's tokenizer
and ``card.json``. `VerifierHead` returns HF-shaped outputs (``.logits`` [B, T, 1] for a process
head, [B, 1] for an outcome head), so the text verifiers wrap it like any
*ForTokenClassification / *ForSequenceClassification model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ponder.errors import ModelLoadError

ARCHITECTURE = "PonderVerifierHead"
KINDS = ("process", "outcome")
N_SCALARS = 5  # log p(x_t), entropy, top log-probability, x_t was the argmax, the line's lowest log p


class VerifierHead(nn.Module):
    def __init__(self, target, kind: str, width: int = 128, heads: int = 4, target_name: str = "",
                 newline_id: int = -1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not allowed; use one of {', '.join(KINDS)}")
        self.__dict__["target"] = target  # frozen and not a submodule: never trained, never saved here
        for p in target.parameters():
            p.requires_grad_(False)
        self.kind, self.width, self.heads, self.target_name = kind, width, heads, target_name
        self.newline_id = newline_id  # the token that ends a line (a step); -1: none
        hidden = target.config.hidden_size
        self.proj = nn.Linear(hidden + N_SCALARS, width)
        self.layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                                norm_first=True, activation="gelu")
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H + 5]: the target's last hidden state per token and its view of that token —
        log p(x_t), entropy and top log-probability of the law x_t was drawn from, whether x_t was
        its argmax, and the lowest log p(x_t) so far on the current line (lines end at `newline_id`)."""
        out = self.target(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[-1].float()  # [B, T, H]
        logp = torch.log_softmax(out.logits.float(), -1)  # [B, T, V]; position t predicts t+1
        prev = torch.cat([torch.zeros_like(logp[:, :1]), logp[:, :-1]], 1)  # [B, T, V]: the law over x_t
        taken = prev.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)  # [B, T]
        taken[:, 0] = 0.0  # the first token has no prediction
        entropy = -(prev.exp() * prev).sum(-1)  # [B, T]
        top = prev.max(-1).values  # [B, T]
        is_top = (taken >= top).float()  # [B, T]
        line_min = taken.clone()  # [B, T]
        for t in range(1, taken.shape[1]):  # a running minimum that restarts after each newline
            fresh = input_ids[:, t - 1] == self.newline_id
            line_min[:, t] = torch.where(fresh, taken[:, t], torch.minimum(line_min[:, t - 1], taken[:, t]))
        return torch.cat([hidden, torch.stack([taken, entropy, top, is_top, line_min], -1)], -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.from_features(self.features(input_ids, attention_mask), attention_mask)

    def from_features(self, features: torch.Tensor, attention_mask: torch.Tensor,
                      per_token: bool = False) -> SimpleNamespace:
        """The head alone on `features` [B, T, H + 5] (training reuses features computed once);
        per_token: every token's logit [B, T, 1] whatever the kind (an outcome head's training)."""
        x = self.proj(features.float())  # [B, T, W]
        width = x.shape[1]
        causal = torch.triu(torch.ones(width, width, dtype=torch.bool), 1)  # True = not attended
        x = self.layer(x, src_mask=causal, src_key_padding_mask=attention_mask == 0, is_causal=True)
        logits = self.out(self.norm(x))  # [B, T, 1]
        if self.kind == "outcome" and not per_token:  # read at the last real token (right-padded rows)
            last = attention_mask.sum(1) - 1  # [B]
            logits = logits[torch.arange(logits.shape[0]), last]  # [B, 1]
        return SimpleNamespace(logits=logits)

    def config_dict(self) -> dict:
        return {"architectures": [ARCHITECTURE], "kind": self.kind, "width": self.width, "heads": self.heads,
                "target": self.target_name, "newline_id": self.newline_id}

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(self.config_dict(), indent=2) + "\n")


def is_head_folder(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and (json.loads(config.read_text()).get("architectures") or [""])[0] == ARCHITECTURE


def resolve_target(name: str, folder: Path) -> Path:
    """The target folder a head names: a sibling folder of that name (a zoo folder keeps its models
    side by side), else a text zoo model (``arith`` or ``zoo:arith``), else a path (relative to the head)."""
    from ponder.modalities.text.spec import ZOO_DIR

    key = name.removeprefix("zoo:")
    for candidate in ([folder.parent / key, ZOO_DIR / key] if key else []):
        if (candidate / "config.json").is_file():
            return candidate
    path = Path(name) if Path(name).is_absolute() else folder / name
    if not name or not (path / "config.json").is_file():
        raise ModelLoadError(f"verifier head {str(folder)!r} names target {name!r}, which is neither a text zoo "
                             "model nor a folder with config.json")
    return path


def load_head(folder: str | Path):
    """(VerifierHead, tokenizer) from a head folder; its target loads in float32, frozen."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    target_dir = resolve_target(config.get("target", ""), folder)
    try:
        target = AutoModelForCausalLM.from_pretrained(target_dir, local_files_only=True, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder if (folder / "tokenizer_config.json").is_file()
                                                  else target_dir, local_files_only=True)
        head = VerifierHead(target, config["kind"], config["width"], config["heads"], config.get("target", ""),
                            config.get("newline_id", -1))
        head.load_state_dict(load_file(folder / "model.safetensors"))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load a verifier head from {str(folder)!r}: {err}") from err
    return head.eval(), tokenizer
