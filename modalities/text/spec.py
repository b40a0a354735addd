"""The text modality's registry entry: any Hugging Face causal LM, the arith verifiers and zoo.

Registered through the ``ponder.modalities`` entry-point group (see `ponder.modalities.registry`).
Importing this module imports no model code.
"""

from __future__ import annotations

from pathlib import Path

from ponder.modalities.registry import ModalitySpec, Option, ZooEntry

ZOO_DIR = Path(__file__).parent / "zoo"
_TRAIN = "ponder.modalities.text.train"
_TRAIN_PYCODE = "ponder.modalities.text.train_pycode"


def _load(folder, *, name: str | None = None, **options):
    from ponder.modalities.text import load

    return load(folder, name=name, **options)


def _load_verifier(spec: str, *, model=None, **options):
    from ponder.modalities.text.verifiers import load_verifier

    return load_verifier(spec, model=model, **options)


def _attention(value):
    from ponder.modalities.text.attention import check_name

    return check_name(value)


def _arith_task(*, split: str, count: int, seed: int = 0, template: str = "Q") -> list[dict]:
    """Problems of the arith task with their answers and worked solutions."""
    from ponder.errors import ConfigError
    from ponder.modalities.text import arith

    if split not in arith.SPLITS:
        raise ConfigError(f"--split {split!r} is not allowed; use one of {', '.join(arith.SPLITS)}")
    if template not in arith.TEMPLATES:
        raise ConfigError(f"--template {template!r} is not allowed; use one of {', '.join(arith.TEMPLATES)}")
    probs = arith.problems(split, count, seed=seed, template=template)
    return [{"prompt": p.prompt, "answer": p.answer, "solution": p.solution(), "split": p.split} for p in probs]


def _zoo(name: str, kind: str, summary: str, recipe: str | None = _TRAIN, weights: bool = True) -> ZooEntry:
    return ZooEntry(name, "text", kind, summary, recipe=recipe, root=ZOO_DIR if weights else None)


SPEC = ModalitySpec(
    name="text",
    summary="any AutoModelForCausalLM folder with its tokenizer (Llama, Qwen2, GPT-2, ...)",
    load=_load,
    output_kind="text",
    verifiers=("exact", "orm", "prm", "self", "ensemble"),
    default_verifier="exact",
    ensemble=("orm", "prm"),
    load_verifier=_load_verifier,
    options=(
        Option("attention", "attention backend: sdpa (default: transformers' own) | reference | flex | triton | "
               "xformers (ponder's attention plan; rows of one prompt share its keys)", metavar="NAME",
               check=_attention),
    ),
    examples=("Q: 58+36-7*2\n", "Q: 12+7*3\n", "Q: 9*9-40\n"),
    option_hint="{beam_width: 2} or {draft: zoo:arith-draft}",
    zoo=(
        _zoo("arith", "model", "LlamaForCausalLM (~14 M) solving multi-step arithmetic step by step"),
        _zoo("arith-draft", "draft", "one-layer Llama distilled from arith, for speculative decoding"),
        _zoo("arith-medusa", "draft", "4 Medusa heads on the frozen arith target (--decoder medusa)",
             recipe="ponder.modalities.text.train_medusa"),
        _zoo("arith-chimera", "draft", "Chimera draft on arith's hidden states: trigram encoder + fusion layer, "
             "drafts autoregressively (--decoder chimera)", recipe="ponder.modalities.text.train_chimera"),
        _zoo("orm", "verifier", "outcome verifier for arith: P(final answer correct), ranked within a problem",
             recipe="ponder.modalities.text.train_verifiers"),
        _zoo("prm", "verifier", "process verifier for arith: P(step correct), every step",
             recipe="ponder.modalities.text.train_verifiers"),
        _zoo("pycode", "model", "LlamaForCausalLM (~3.4 M, 2048-token context) trained on the Python stdlib's "
             "own source files", recipe=_TRAIN_PYCODE),
        _zoo("pycode-draft", "draft", "one-layer Llama distilled from pycode (same BPE), for speculative decoding",
             recipe=_TRAIN_PYCODE),
        _zoo("facts", "model", "character-level Llama that knows the facts world's known entities and reads "
             "documents (2048-character context): the context and retrieval methods' model",
             recipe="ponder.modalities.text.train_facts"),
        _zoo("exact", "verifier", "exact checker for arith: 1 if the answer is right (no weights)", recipe=None,
             weights=False),
    ),
    tasks={"arith": _arith_task},
    order=10,
)
