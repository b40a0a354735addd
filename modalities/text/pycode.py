"""The pycode task: real text, from the Python standard library's own source files on this machine.

Every Python install carries its standard library as source, so this corpus is on every machine
with no download. The data is:

* **Files**: the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]``, as a sorted list of
  POSIX paths relative to that root, minus what is not the library's own hand-written code (see
  `SKIP_DIRS`, `SKIP_TOP`, `SKIP_PREFIXES`): test suites, installed packages, demos, generated
  codec and data tables, the build's machine-specific ``_sysconfigdata``.
* **Split**: a file is held out when the SHA-1 of its relative path falls in bucket 0 of
  `HELDOUT_BUCKETS` (`split_of`): a pure function of the path, so a different Python version keeps
  every file it shares with this one on the same side, and only adds or drops files.
* **Identity**: `data_info` records ``sys.version``, the file count and a SHA-1 of the file set
  (each path with the SHA-1 of its bytes). A card's figures were measured on that set;
  `data_warning` says so when the running Python's set differs (the split rule stays).
* **Tokenizer**: `train_tokenizer` learns a byte-level BPE (GPT-2's pre-tokenizer, every byte in the
  base alphabet, so any text round-trips exactly) on the train files. BPE rather than raw bytes:
  at 4096 entries it packs about 3.4 bytes of stdlib code into a token (whole identifiers, ``self.``,
  a newline plus its indentation), so a 2048-token context holds about 7 KB of code — a
  whole module's imports and class header — and a drafter's accepted run of tokens covers whole
  identifiers; the embedding table it costs (4096 x hidden) is a fraction of a few-MB model.
* **Streams**: `token_stream` packs files as ``<|endoftext|> file <|endoftext|> file ...`` (the
  one special token is BOS and EOS alike), the way the models train and the way prompts start.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import sysconfig
import tokenize
from pathlib import Path

import torch

HELDOUT_BUCKETS = 10  # a file is held out when sha1(path) % 10 == 0: about one file in ten
# directories skipped wherever they sit: test suites and caches
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"})
# top-level entries skipped: the IDE and demos, generated tables (codecs, pydoc topics), bundles, toys
SKIP_TOP = frozenset({"idlelib", "turtledemo", "encodings", "pydoc_data", "ensurepip", "__phello__",
                      "lib-dynload"})
SKIP_PREFIXES = ("_sysconfigdata", "config-")  # build-specific files differ between machines
BOS = "<|endoftext|>"  # separates files: BOS of a file and EOS of the one before
PAD = "<|pad|>"
DEFAULT_VOCAB = 4096


def stdlib_root() -> Path:
    """The running Python's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path | None = None) -> list[str]:
    """Every kept ``*.py`` file under `root` (default: the stdlib), as sorted relative POSIX paths."""
    root = Path(root) if root is not None else stdlib_root()
    found = []
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        top = not rel.parts
        dirs[:] = [d for d in dirs
                   if d not in SKIP_DIRS and not (top and (d in SKIP_TOP or d.startswith(SKIP_PREFIXES)))]
        for name in names:
            if name.endswith(".py") and not (top and name.startswith(SKIP_PREFIXES)):
                found.append((rel / name).as_posix())
    return sorted(found)


def split_of(path: str) -> str:
    """``"heldout"`` or ``"train"`` for a relative path: SHA-1 of the path, bucket 0 of 10 held out."""
    digest = hashlib.sha1(path.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_BUCKETS == 0 else "train"


def split_files(split: str, root: Path | None = None, files: list[str] | None = None) -> list[str]:
    """The sorted relative paths of one split ("train" | "heldout")."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return [f for f in (files if files is not None else source_files(root)) if split_of(f) == split]


def read_source(path: str, root: Path | None = None) -> str:
    """A source file's text, decoded as Python itself would (its coding cookie, else UTF-8)."""
    root = Path(root) if root is not None else stdlib_root()
    with tokenize.open(root / path) as f:
        return f.read()


def file_set_sha1(files: list[str], root: Path | None = None) -> str:
    """SHA-1 over the sorted paths, each with the SHA-1 of its bytes: names the exact text measured."""
    root = Path(root) if root is not None else stdlib_root()
    h = hashlib.sha1()
    for path in sorted(files):
        h.update(path.encode("utf-8") + b"\0" + hashlib.sha1((root / path).read_bytes()).digest() + b"\n")
    return h.hexdigest()


def data_info(root: Path | None = None, files: list[str] | None = None) -> dict:
    """What a card records about its data: the Python, the file set's size and hash, the split rule."""
    files = files if files is not None else source_files(root)
    heldout = [f for f in files if split_of(f) == "heldout"]
    return {"python": sys.version, "files": len(files), "heldout_files": len(heldout),
            "file_set_sha1": file_set_sha1(files, root),
            "split_rule": f"held out iff int(sha1(relative path)[:8 bytes]) % {HELDOUT_BUCKETS} == 0"}


@functools.cache
def _running_data_info() -> dict:
    return data_info()  # the running Python's library does not change under it: hash it once


def data_warning(card: dict, root: Path | None = None) -> str | None:
    """A warning when the running Python's file set (or the one under `root`) differs from the one
    `card`'s figures were measured on (None when it matches, or the card records no pycode data)."""
    recorded = card.get("stdlib") if isinstance(card, dict) else None
    if not isinstance(recorded, dict) or "file_set_sha1" not in recorded:
        return None
    now = data_info(root) if root is not None else _running_data_info()
    if now["file_set_sha1"] == recorded["file_set_sha1"]:
        return None
    return (f"zoo:{card.get('name', 'pycode')}'s figures were measured on the standard library of Python "
            f"{recorded.get('python', '?').split()[0]} ({recorded.get('files')} files, set "
            f"{recorded['file_set_sha1'][:12]}); this Python {sys.version.split()[0]} has {now['files']} files "
            f"(set {now['file_set_sha1'][:12]}): the split rule is the same, the figures may differ")


def warn_if_data_changed(card: dict) -> str | None:
    """Warn (`UserWarning`) and note it in ``card["warning"]`` when `data_warning` has something to say."""
    import warnings

    message = data_warning(card)
    if message is not None:
        card["warning"] = message
        warnings.warn(message, UserWarning, stacklevel=3)
    return message


# ---- tokenizer -----------------------------------------------------------------------------------


def train_tokenizer(texts, vocab_size: int = DEFAULT_VOCAB):
    """A byte-level BPE `PreTrainedTokenizerFast` learned on `texts` (an iterable of strings).

    Encoding prepends BOS (files start after one in training); decoding with
    ``skip_special_tokens=True`` gives back the text exactly (no space clean-up).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False, padding_side="left",
                                   model_max_length=1 << 30)


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """``[BOS] text0 [BOS] text1 ...`` as one long tensor of ids [N] (int32 to halve its memory)."""
    ids = tokenizer(list(texts))["input_ids"]  # each row starts with BOS
    return torch.tensor([t for row in ids for t in row], dtype=torch.int32)


# ---- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, context: int, max_chunks: int | None = None,
                 batch_size: int = 8) -> dict:
    """Mean next-token cross-entropy over `stream` cut into non-overlapping windows of `context`
    tokens, each scored on its own (so a token sees on average half a window of context).

    Returns {"loss", "perplexity", "tokens", "chunks"}.
    """
    import math

    chunks = stream[: (len(stream) // context) * context].view(-1, context).long()  # [C, T]
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    if len(chunks) == 0:
        raise ValueError(f"the stream ({len(stream)} tokens) is shorter than one window of {context}")
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        ids = chunks[i : i + batch_size]  # [B, T]
        logits = model(input_ids=ids).logits[:, :-1].float()  # [B, T-1, V]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
    loss = total / count
    return {"loss": round(loss, 4), "perplexity": round(math.exp(loss), 3), "tokens": count, "chunks": len(chunks)}


def heldout_prompts(tokenizer, count: int = 20, prompt_tokens: int = 384, min_rest_tokens: int = 128,
                    root: Path | None = None) -> list[str]:
    """Prompts made of held-out file prefixes, one per file in path order: the file's own first
    tokens (BOS included, at most `prompt_tokens`), cut at the last place where the prefix's text
    re-encodes to exactly those ids, so a prompt is tokenised as in training (a cut inside a run of
    indentation would not be). Only files with at least `min_rest_tokens` tokens after the prefix.

    Raises ValueError when fewer than `count` held-out files are long enough.
    """
    prompts = []
    for path in split_files("heldout", root):
        ids = tokenizer(read_source(path, root))["input_ids"]  # [BOS, ...]
        if len(ids) < prompt_tokens + min_rest_tokens:
            continue
        for cut in range(prompt_tokens, 1, -1):
            text = tokenizer.decode(ids[:cut], skip_special_tokens=True)
            if tokenizer(text)["input_ids"] == ids[:cut]:
                prompts.append(text)
                break
        if len(prompts) == count:
            return prompts
    raise ValueError(f"only {len(prompts)} held-out files have {prompt_tokens} + {min_rest_tokens} tokens; "
                     f"asked for {count}")
