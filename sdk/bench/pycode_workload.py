"""The pycode speculative workload: held-out standard-library file prefixes for zoo:pycode.

Real code is copy-heavy (identifiers, imports, ``self.``, docstrings that repeat signatures), so it
is where train-free drafters (prompt lookup, token recycling, ...) should earn their keep; the
workload gives every decoder in `ponder bench speculative` the same prompts, next to HF assisted
generation (``assistant_model=`` the draft) and HF prompt lookup measured in the same run.

`pycode_workload` returns the prompts only; the bench owns the decoding and the timing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PycodeWorkload:
    """What `ponder bench speculative` needs to run the pycode workload."""

    name: str  # the workload's name in bench rows ("pycode")
    target: str  # the target's zoo spec ("zoo:pycode")
    draft: str  # its draft's zoo spec ("zoo:pycode-draft")
    prompts: list[str]  # held-out file prefixes, each tokenised as in training (ends at a clean cut)
    max_new_tokens: int  # every prompt's file has at least this many tokens after the prefix
    prompt_tokens: int  # the most tokens a prompt has, BOS included
    warning: str | None  # set when this Python's stdlib differs from the one the card was measured on


def pycode_workload(target=None, *, count: int = 20, prompt_tokens: int = 384,
                    max_new_tokens: int = 96) -> PycodeWorkload:
    """Prompts for the pycode workload: the first `prompt_tokens` tokens of `count` held-out files.

    Args:
        target: the loaded target (a `TextModel`, whose tokenizer cuts the prompts) or None (read
            the tokenizer from zoo:pycode's folder; ZooError when it is not built).
        count: prompts, one per held-out file in path order (files too short are skipped).
        prompt_tokens: the most tokens a prompt holds (BOS included); 256-512 keeps a prompt plus
            its continuation well inside the model's 2048-token context.
        max_new_tokens: tokens each prompt is continued for; only files with at least that many
            tokens after the prefix are used, so a greedy continuation rarely meets the file's end.
    Returns:
        A `PycodeWorkload`; its `warning` is not None when the running Python's standard library
        differs from the one zoo:pycode's card was measured on (the split rule is the same).
    """
    from ponder.errors import ConfigError, check_int
    from ponder.modalities.text import pycode

    check_int("count", count, what="number of prompts")
    check_int("prompt_tokens", prompt_tokens, minimum=2, what="tokens per prompt")
    check_int("max_new_tokens", max_new_tokens, what="new tokens per prompt")
    if target is None:
        from transformers import AutoTokenizer

        from ponder import zoo

        entry = zoo.entry("pycode")
        tokenizer = AutoTokenizer.from_pretrained(entry.weights(), local_files_only=True)
        card = entry.card()
    else:
        tokenizer, card = target.tokenizer, dict(getattr(target, "card", {}) or {})
    context = int(card.get("context", 2048))
    if prompt_tokens + max_new_tokens > context:
        raise ConfigError(f"prompt_tokens + max_new_tokens = {prompt_tokens + max_new_tokens} exceeds the "
                          f"model's context of {context} tokens")
    try:
        prompts = pycode.heldout_prompts(tokenizer, count, prompt_tokens, min_rest_tokens=max_new_tokens)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return PycodeWorkload(name="pycode", target="zoo:pycode", draft="zoo:pycode-draft", prompts=prompts,
                          max_new_tokens=max_new_tokens, prompt_tokens=prompt_tokens,
                          warning=card.get("warning") or pycode.data_warning(card))
