"""A throwaway modality, as a separate package would ship it: the file `test_registry.py` copies
into a temporary folder as the module ``ponder_toy_notes`` with a dist-info whose entry point
registers it (group ``ponder.modalities``). Nothing of ponder's sdk or demos knows it.

The model is a Markov chain over three notes (C, E, G) and an end token; its outputs are `Notes`, a
kind of output no built-in kind accepts, written as ``.notes`` files and described in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ponder.errors import InputError, ModelLoadError
from ponder.modalities.registry import ModalitySpec, Option, OutputKind

NOTES = "CEG"
END, BOS = 3, 4
NEG = -1e9


@dataclass(frozen=True)
class Notes:
    """A melody: note names in order."""

    notes: str

    def to_dict(self) -> dict:
        return {"notes": self.notes}


class NotesCache:
    def __init__(self):
        self.last = torch.zeros(0, dtype=torch.long)
        self.length = 0

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def reorder(self, index: torch.Tensor) -> None:
        self.last = self.last[index]


class NotesModel:
    """Next note depends on the previous one; `bias` (a load option) tilts every row towards G."""

    modality = "toy-notes"
    eos_token_ids = frozenset({END})
    context_length = 32

    def __init__(self, folder: Path, name: str, bias: float = 0.0):
        table = torch.tensor([[float(x) for x in line.split()] for line in (folder / "table.txt").read_text()
                              .splitlines() if line.strip()])  # [5, 4]
        table[:, 2] += bias
        self.table = table / table.sum(-1, keepdim=True)
        self.name = name

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        probs = self.table[last]  # [..., 4]
        logits = torch.where(probs > 0, probs.clamp_min(1e-30).log(), torch.full_like(probs, NEG))
        return torch.cat([logits, torch.full((*logits.shape[:-1], 1), NEG)], -1)  # [..., 5]: BOS never drawn

    def encode(self, prompt: str) -> list[int]:
        if not prompt.strip():
            raise InputError("a notes prompt is a few note names, e.g. 'C E'")
        return [BOS] + [NOTES.index(ch) for ch in prompt.upper() if ch in NOTES]

    def decode(self, ids) -> Notes:
        return Notes("".join(NOTES[i] for i in ids if i < len(NOTES)))

    def new_cache(self) -> NotesCache:
        return NotesCache()

    def prefill(self, prompt_ids, cache):
        cache.last = torch.tensor([p[-1] for p in prompt_ids])
        cache.length = max(len(p) for p in prompt_ids)
        return self._logits(cache.last)  # [B, V]

    def forward(self, tokens, cache, attn_mask=None):
        cache.last = tokens[:, -1]
        cache.length += tokens.shape[1]
        return self._logits(tokens)  # [B, T, V]


class CountG:
    """Verifier: the share of G among the notes."""

    name = "count-g"

    def score(self, prompt, outputs):
        return torch.tensor([o.notes.count("G") / max(1, len(o.notes)) for o in outputs])


def _load(folder, *, name=None, bias: float = 0.0):
    folder = Path(folder)
    if not (folder / "table.txt").is_file():
        raise ModelLoadError(f"notes model folder {str(folder)!r} has no table.txt")
    return NotesModel(folder, name or folder.name, bias=bias)


def _load_verifier(spec, *, model=None, **options):
    return CountG()


NOTES_KIND = OutputKind("notes", ".notes", lambda o: isinstance(o, Notes), lambda o: (o.notes + "\n").encode(),
                        lambda o: f"<notes {o.notes}>")

SPEC = ModalitySpec(
    name="toy-notes",
    summary="a Markov chain over three notes (a test plug-in)",
    load=_load,
    output_kind=NOTES_KIND,
    verifiers=("count-g",),
    default_verifier="count-g",
    load_verifier=_load_verifier,
    options=(Option("bias", "extra weight on G", type=float, flag="--bias"),),
    examples=("C E",),
    diversity=lambda outputs: len({o.notes for o in outputs}) / len(outputs),
)


def write_model(folder: Path) -> Path:
    """A model folder: table.txt, one row per previous token (C, E, G, END, BOS), columns C E G END."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.txt").write_text("1 2 1 1\n2 1 1 1\n1 1 1 2\n1 1 1 1\n2 2 1 0\n")
    return folder


# ---- a second throwaway modality whose outputs are audio: the same chain, each note a short sine tone ----

RATE = 8000
PITCH = {"C": 261.63, "E": 329.63, "G": 392.0}


class TonesModel(NotesModel):
    modality = "toy-tones"

    def decode(self, ids):
        from ponder.search.core import Audio

        notes = super().decode(ids).notes
        t = torch.arange(RATE // 10) / RATE  # 0.1 s per note
        parts = [0.5 * torch.sin(2 * torch.pi * PITCH[n] * t) for n in notes] or [torch.zeros(RATE // 10)]
        return Audio(torch.cat(parts), RATE)


def _load_tones(folder, *, name=None):
    folder = Path(folder)
    if not (folder / "table.txt").is_file():
        raise ModelLoadError(f"tones model folder {str(folder)!r} has no table.txt")
    return TonesModel(folder, name or folder.name)


class Loudness:
    """Verifier: RMS level of the clip."""

    name = "loudness"

    def score(self, prompt, outputs):
        return torch.tensor([float(o.waveform.pow(2).mean().sqrt()) for o in outputs])


TONES_SPEC = ModalitySpec(
    name="toy-tones",
    summary="the notes chain rendered as sine tones (a test plug-in with audio outputs)",
    load=_load_tones,
    output_kind="audio",
    verifiers=("loudness",),
    default_verifier="loudness",
    load_verifier=lambda spec, *, model=None, **options: Loudness(),
    examples=("C",),
)
