"""Text as a `SequenceModel`: any Hugging Face causal LM + tokenizer from a local folder.

The model runs over ponder's own KV cache (`ponder.kernels.KVCache`, preallocated, truncatable),
bridged into transformers' `Cache` interface, with left padding, per-row attention masks and
per-row positions kept beside it — so decoders in `ponder.search.decoding` can drive Llama, Qwen2,
GPT-2 … step by step, roll back rejected tokens, and reorder rows, without `model.generate`.
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ponder.errors import InputError, ModelLoadError
from ponder.kernels import KVCache
from ponder.kernels.attention import DEFAULT_BACKEND, AttentionPlan
from ponder.kernels.attention.recycled import RecycledAttention
from ponder.kernels.tree import tree_attention_bias, tree_positions
from ponder.modalities.text.answers import extract_answer
from ponder.modalities.text.attention import PlanContext, routable, route
from ponder.modalities.text.attention import check_name as check_attention
from ponder.modalities.text.attention import switch as switch_attention

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _hf_cache_classes():
    """Build the transformers `Cache` bridge lazily, so importing this module stays light."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    class _Layer(CacheLayerMixin):
        """One decoder layer's view onto the shared ponder `KVCache`."""

        is_sliding = False
        is_croppable = True

        def __init__(self, owner, index: int):
            super().__init__()
            self.owner, self.index = owner, index

        def lazy_initialization(self, key_states, value_states):
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            # key_states, value_states: [B, H, T, D] -> whole stored [B, H, L+T, D]
            self.is_initialized = True
            return self.owner.store.append(self.index, key_states, value_states)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.get_seq_length() + query_length, 0

        def get_seq_length(self) -> int:
            return self.owner.prefix_length + self.owner.store.layer_length(self.index)

        def get_max_length(self) -> int:
            return -1

        def reset(self) -> None:
            self.owner.reset()

        def crop(self, tokens_to_remove: int) -> None:
            raise RuntimeError("crop a TextCache through TextCache.crop / truncate, not per layer")

        def reorder_cache(self, beam_idx):
            raise RuntimeError("reorder a TextCache through TextCache.reorder, not per layer")

    class TextCache(Cache):
        """ponder's KV cache for one batch of a text model, plus its padding mask.

        length: positions stored (left padding included), shared by every row.
        attention_mask: [B, length] 1 for real tokens, 0 for left padding; None while no row is padded.
        """

        prefix_length = 0  # positions of a shared prefix kept once for all rows (PrefixTextCache)
        prefix_keys: tuple = ()  # per layer [1, H, P, D] when a prefix is shared
        prefix_values: tuple = ()
        share_prefix = None  # this cache copies a shared prompt into every row (blocks SharedPrefixCache)

        def __init__(self, num_layers: int, capacity: int = 256):
            self.store = KVCache(num_layers, capacity=capacity)
            super().__init__(layers=[_Layer(self, i) for i in range(num_layers)])
            self.attention_mask: torch.Tensor | None = None  # [B, length]

        @property
        def length(self) -> int:
            """Positions of every row: the shared prefix's (if any) and what `store` holds."""
            return self.prefix_length + self.store.length

        @property
        def batch_size(self) -> int | None:
            return self.store.batch_size

        def reset(self) -> None:
            self.store.reset()
            self.attention_mask = None

        def allocated_bytes(self) -> int:
            """Bytes of key / value buffers this cache holds (allocated capacity, every layer)."""
            prefix = sum(t.numel() * t.element_size() for t in [*self.prefix_keys, *self.prefix_values])
            return prefix + self.store.allocated_bytes()

        def read_bytes(self) -> int:
            """Bytes of keys and values one attention pass over the cache hands its kernel, every layer:
            a shared prefix once for all rows, plus each row's stored positions (without a shared
            prefix, the prompt once per row)."""
            return _bytes_per_position(self) * (self.prefix_length + (self.batch_size or 0) * self.store.length)

        def truncate(self, length: int) -> None:
            """Roll back to the first `length` positions (rejected draft tokens, ...)."""
            self.store.truncate(length - self.prefix_length)
            if self.attention_mask is not None:
                self.attention_mask = self.attention_mask[:, :length]

        def hide(self, hidden: torch.Tensor) -> None:
            """Per-row rollback: positions marked in `hidden` [B, length] (bool) are never attended
            to again and no longer count toward later tokens' positions — a row's rejected draft
            tokens become holes, as if never fed, while other rows keep theirs (shared length)."""
            if tuple(hidden.shape) != (self.batch_size, self.length):
                raise ValueError(f"hide takes a [B, length] mask of shape {(self.batch_size, self.length)}, "
                                 f"got {tuple(hidden.shape)}")
            mask = self.attention_mask
            if mask is None:
                mask = torch.ones(tuple(hidden.shape), dtype=torch.long, device=hidden.device)
            self.attention_mask = mask.masked_fill(hidden.to(mask.device), 0)

        def select_positions(self, start: int, index: torch.Tensor) -> None:
            """Row b's position start + index[b, j] moves to start + j; length becomes start + N.
            index: [B, N]. Compacts a verified tree's accepted path (see `KVCache.select_positions`)."""
            with torch.inference_mode():  # the buffers are inference tensors (written under forward)
                self.store.select_positions(start - self.prefix_length, index)
            if self.attention_mask is not None:
                mask = self.attention_mask
                moved = mask.gather(1, start + index.to(mask.device))  # [B, N]
                self.attention_mask = torch.cat([mask[:, :start], moved], dim=1)

        def reorder(self, index: torch.Tensor) -> None:
            """Keep / duplicate rows: row j becomes old row index[j]. index: [B']"""
            self.store.reorder(index)
            if self.attention_mask is not None:
                self.attention_mask = self.attention_mask[index]

        def crop(self, tokens_to_remove: int) -> None:
            """transformers' rollback: crop(-k) drops the last k positions, crop(0) drops none."""
            if tokens_to_remove > 0:
                raise ValueError(f"crop takes a count to remove as a negative number (or 0), got "
                                 f"{tokens_to_remove}; use truncate(length) to keep the first `length`")
            self.truncate(self.length + tokens_to_remove)

        def reorder_cache(self, beam_idx):
            self.reorder(beam_idx)

        def unshare(self) -> None:
            """Every row already holds its whole prompt (only `PrefixTextCache` shares one)."""

        def join(self, other: TextCache, index: torch.Tensor | None = None) -> None:
            """Continuous batching: append `other`'s rows (`index`: which, duplicates allowed; default
            all) below these rows, right-aligned, so both end at this step's position; the shorter
            side is left-padded and its padding hidden in `attention_mask`. Positions count real
            tokens only, so a joined row's next positions are the ones it would have had alone."""
            self.unshare()
            other.unshare()
            theirs = other.attention_mask
            if theirs is None:
                theirs = torch.ones((other.batch_size or 0, other.length), dtype=torch.long)
            if index is not None:
                theirs = theirs[index.to(theirs.device)]
            mine = self.attention_mask
            if mine is None:
                mine = torch.ones((self.batch_size or 0, self.length), dtype=torch.long, device=theirs.device)
            length = max(self.length, other.length)

            def pad(mask):
                return torch.cat([mask.new_zeros((mask.shape[0], length - mask.shape[1])), mask], dim=1)

            self.store.join(other.store, index)
            full = torch.cat([pad(mine), pad(theirs.to(mine.device))], dim=0)  # [B + B', length]
            self.attention_mask = full if bool((full == 0).any()) else None

        def leading_padding(self) -> int:
            """Leading positions no row attends to (left padding every row has): `drop_leading` can go."""
            if self.attention_mask is None or self.attention_mask.shape[0] == 0:
                return 0
            real = self.attention_mask.any(dim=0)  # [length]
            return int(real.long().argmax()) if bool(real.any()) else self.length

        def drop_leading(self, count: int) -> None:
            """Forget the first `count` positions of every row (padding no row attends to)."""
            self.unshare()
            self.store.drop_leading(count)
            if self.attention_mask is not None:
                mask = self.attention_mask[:, count:]
                self.attention_mask = mask if bool((mask == 0).any()) else None

    class PrefixTextCache(TextCache):
        """A `TextCache` whose rows can share one copy of a prompt (cascade attention reads it once).

        After `share_prefix(n)` the one prefilled row's keys / values become the shared prefix
        (`prefix_keys[layer]`: [1, H, P, D]) and `store` holds only each of the n rows' own suffix;
        positions still count from the prompt's start (length = P + suffix). Forking rows (`reorder`)
        copies suffixes only. An operation that reaches into the prefix of some rows only (hiding,
        truncating or re-selecting prompt positions) first gives every row its own copy (`unshare`),
        so every `TextCache` operation keeps its meaning. Only ponder's attention (a model loaded
        with an attention backend other than sdpa) reads the prefix: transformers' own never sees it.
        """

        def __init__(self, num_layers: int, capacity: int = 256, suffix_capacity: int = 16):
            super().__init__(num_layers, capacity=capacity)
            self.suffix_capacity = suffix_capacity
            self.prefix_keys: list[torch.Tensor] = []  # per layer [1, H, P, D]
            self.prefix_values: list[torch.Tensor] = []
            self.prefix_length = 0
            self._rows: int | None = None  # the batch size while no suffix is stored

        @property
        def batch_size(self) -> int | None:
            return self.store.batch_size or self._rows

        def share_prefix(self, rows: int) -> None:
            """The one stored row becomes a prefix shared by `rows` rows, each with an empty suffix."""
            if self.prefix_length or self.store.batch_size != 1 or self.attention_mask is not None:
                raise ValueError("share_prefix needs exactly one stored, unpadded row and no shared prefix yet; "
                                 f"this cache holds {self.batch_size} rows of {self.length} positions")
            layers = range(self.store.num_layers)
            self.prefix_keys = [self.store.keys(layer).clone() for layer in layers]  # [1, H, P, D] each
            self.prefix_values = [self.store.values(layer).clone() for layer in layers]
            self.prefix_length = self.store.length
            self.store = KVCache(self.store.num_layers, capacity=self.suffix_capacity)
            self._rows = int(rows)

        def unshare(self) -> None:
            """Give every row its own copy of the prefix (a plain `TextCache` layout from here on)."""
            if not self.prefix_length:
                return
            rows, length = self.batch_size, self.length
            store = KVCache(self.store.num_layers, capacity=max(length, 256))
            for layer in range(store.num_layers):
                pieces_k = [self.prefix_keys[layer].expand(rows, -1, -1, -1)]
                pieces_v = [self.prefix_values[layer].expand(rows, -1, -1, -1)]
                if self.store.layer_length(layer):
                    pieces_k.append(self.store.keys(layer))
                    pieces_v.append(self.store.values(layer))
                store.append(layer, torch.cat(pieces_k, dim=2), torch.cat(pieces_v, dim=2))
            self.store, self.prefix_keys, self.prefix_values, self.prefix_length = store, [], [], 0

        def reset(self) -> None:
            super().reset()
            self.prefix_keys, self.prefix_values, self.prefix_length, self._rows = [], [], 0, None

        def truncate(self, length: int) -> None:
            if length < self.prefix_length:
                self.unshare()
            super().truncate(length)

        def hide(self, hidden: torch.Tensor) -> None:
            if self.prefix_length and bool(hidden[:, :self.prefix_length].any()):
                self.unshare()
            super().hide(hidden)

        def select_positions(self, start: int, index: torch.Tensor) -> None:
            if start < self.prefix_length:
                self.unshare()
            super().select_positions(start, index)

        def reorder(self, index: torch.Tensor) -> None:
            """Keep / duplicate rows: only their suffixes are copied, the prefix stays one copy."""
            super().reorder(index)
            self._rows = int(index.shape[0])

    return TextCache, PrefixTextCache


def _bytes_per_position(cache) -> int:
    """Bytes one position of one row occupies in a text cache's keys and values, all layers together
    (read from its shared prefix, else from its store; 0 while it holds nothing)."""
    if cache.prefix_keys:
        return sum(t[0, :, 0].numel() * t.element_size() for t in [*cache.prefix_keys, *cache.prefix_values])
    store, total = cache.store, 0
    for layer in range(store.num_layers):
        if store.layer_length(layer):
            keys = store.keys(layer)  # [B, H, L, D]
            total += 2 * keys.shape[1] * keys.shape[3] * keys.element_size()
    return total


_CACHE_CLASSES = None


def _cache_classes():
    global _CACHE_CLASSES
    if _CACHE_CLASSES is None:
        _CACHE_CLASSES = _hf_cache_classes()
    return _CACHE_CLASSES


def text_cache_class():
    """`TextCache`: ponder's KV cache bridged into transformers' `Cache` (every row stores its prompt)."""
    return _cache_classes()[0]


def prefix_cache_class():
    """`PrefixTextCache`: a `TextCache` whose rows can share one copy of their prompt."""
    return _cache_classes()[1]


class TextModel:
    """A `SequenceModel` over a transformers causal LM and its tokenizer.

    Build it with `TextModel.from_folder(path)` (what `ponder.load("text", path)` does) or wrap an
    already loaded model and tokenizer.
    """

    modality = "text"

    def __init__(self, model, tokenizer, name: str = "model", card: dict | None = None,
                 attention: str = "sdpa"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.card = card or {}
        config = model.config
        self.num_layers = config.get_text_config(decoder=True).num_hidden_layers
        self.context_length = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
            or getattr(tokenizer, "model_max_length", 2048)
        )
        eos = set()
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None),
                       getattr(config, "eos_token_id", None)):  # composite configs (Janus) have none
            if source is None:
                continue
            eos.update(source if isinstance(source, (list, tuple)) else [source])
        self.eos_token_ids = frozenset(int(e) for e in eos)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = next(iter(sorted(self.eos_token_ids)), 0)
        self.pad_token_id = int(pad)
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # the attention backend every forward runs (see ponder.modalities.text.attention); "sdpa" is
        # transformers' own path, any other routes through ponder's plan and shares a prompt's keys
        self.attention = route(model, attention, self.device)
        self._recycled = None  # Recycled Attention's state inside `recycling`
        self._altered = 0  # open blocks that change what a forward computes (layer skipping, hidden capture)
        # prompts prefilled lately under ponder's attention: ids -> (keys, values, logits), newest last
        self.prompt_cache: OrderedDict[tuple[int, ...], tuple[list, list, torch.Tensor]] = OrderedDict()
        self.prompt_cache_bytes = 256 * 2**20  # what the kept prompts' keys and values may hold; 0 = keep none
        self.prompt_cache_hits = 0

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path, *, trust_remote_code: bool = False, dtype: str | None = None,
                    device: str = "cpu", name: str | None = None, attention: str = "sdpa") -> TextModel:
        """Load a causal LM and tokenizer saved with `save_pretrained` (safetensors only, offline).

        dtype: "float32" | "bfloat16" | "float16" | None (None: float32 on CPU, the saved dtype
        elsewhere — CPUs are slow or inexact in half precision).
        attention: the attention backend (`ponder.kernels.attention.BACKENDS`): "sdpa" (default,
        transformers' own), "reference", "flex", "triton", "xformers" (ponder's plan path).
        """
        check_attention(attention)
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"model folder {str(path)!r} does not exist or is not a folder; "
                                 "pass a local folder written by save_pretrained, or zoo:NAME")
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"model folder {str(folder)!r} has no config.json; "
                                 "expected a folder written by save_pretrained")
        if not any((folder / f).is_file() for f in _WEIGHT_FILES):
            raise ModelLoadError(f"model folder {str(folder)!r} has no safetensors weights "
                                 f"({' or '.join(_WEIGHT_FILES)}); ponder loads safetensors only")
        if dtype is None:
            torch_dtype = torch.float32 if device == "cpu" else "auto"
        else:
            allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
            if dtype not in allowed:
                raise ModelLoadError(f"dtype {dtype!r} is not allowed; use one of {', '.join(allowed)}")
            torch_dtype = allowed[dtype]
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True,
                                                trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                      trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                folder, config=config, local_files_only=True, trust_remote_code=trust_remote_code,
                use_safetensors=True, dtype=torch_dtype,
            ).to(device)
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"cannot load a causal LM from {str(folder)!r}: {err}") from err
        card_file = folder / "card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        return cls(model, tokenizer, name=name or folder.name, card=card, attention=attention)

    # ---- SequenceModel -------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """Prompt text -> token ids (with BOS when the tokenizer adds one)."""
        if not isinstance(prompt, str) or not prompt:
            raise InputError(f"prompt must be a non-empty string, got {prompt!r}")
        return list(self.tokenizer(prompt)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- what step-level search and voting need -----------------------------------------------

    step_delimiter = "\n"  # a step (what a process verifier scores) is one line

    def is_step_end(self, ids: Sequence[int]) -> bool:
        """Whether the step made of `ids` has ended: it holds a newline after some text."""
        return self.step_delimiter in self.decode(ids).lstrip()  # leading blank lines are not a step

    def extract_answer(self, output: str) -> str | None:
        """The final answer stated in `output` (for voting); see `ponder.modalities.text.answers`."""
        return extract_answer(output)

    def new_cache(self, capacity: int = 256):
        """An empty cache; under ponder's attention one whose rows can share their prompt's keys."""
        if self.attention == DEFAULT_BACKEND:
            return text_cache_class()(self.num_layers, capacity=capacity)
        return prefix_cache_class()(self.num_layers, capacity=capacity)

    def check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        """InputError when prompt + new tokens would exceed the model's context."""
        if prompt_len + max_new_tokens > self.context_length:
            raise InputError(
                f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                f"context of {self.context_length} tokens; shorten the prompt or lower max_new_tokens "
                f"to at most {max(0, self.context_length - prompt_len)}"
            )

    @torch.inference_mode()
    def prefill(self, prompt_ids: Sequence[Sequence[int]], cache) -> torch.Tensor:
        """Left-pad `prompt_ids`, run them through the model into an empty `cache`.

        Returns next-token logits [B, V] (float32) for every row.
        """
        if cache.length != 0:
            raise ValueError("prefill needs an empty cache")
        key = self._prompt_key(prompt_ids, cache)
        if key is not None and key in self.prompt_cache:
            self.prompt_cache.move_to_end(key)
            self.prompt_cache_hits += 1
            keys, values, logits = self.prompt_cache[key]
            for layer, (k, v) in enumerate(zip(keys, values)):
                cache.store.append(layer, k, v)  # a copy: the kept prompt is never written through
            return logits.clone()
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)  # [B, T]
        for row, p in enumerate(prompt_ids):
            if len(p):
                ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
                mask[row, width - len(p):] = 1
        padded = any(len(p) != width for p in prompt_ids)
        logits = self._run(ids.to(self.device), cache, mask.to(self.device) if padded else None)[:, -1]
        if key is not None:
            self._keep_prompt(key, cache, logits)
        return logits

    def _prompt_key(self, prompt_ids, cache) -> tuple[int, ...] | None:
        """The prompt cache's key for this prefill, or None when it may not be used: only one row into
        a `PrefixTextCache` (ponder's attention), outside blocks that change the forward."""
        if (self.prompt_cache_bytes <= 0 or len(prompt_ids) != 1 or not isinstance(cache, prefix_cache_class())
                or self._altered or self._recycled is not None):
            return None
        return tuple(int(t) for t in prompt_ids[0])

    def _keep_prompt(self, key: tuple[int, ...], cache, logits: torch.Tensor) -> None:
        """Remember a prefilled prompt (SGLang's radix cache, reduced to whole prompts): the next prefill
        of the same ids copies these keys and values instead of running the model. Oldest go first
        when the kept bytes would pass `prompt_cache_bytes`."""
        keys = [cache.store.keys(layer).clone() for layer in range(self.num_layers)]
        values = [cache.store.values(layer).clone() for layer in range(self.num_layers)]
        size = sum(t.numel() * t.element_size() for t in keys + values)
        if size > self.prompt_cache_bytes:
            return
        self.prompt_cache[key] = (keys, values, logits.clone())
        while sum(t.numel() * t.element_size() for k, v, _ in self.prompt_cache.values() for t in k + v) > \
                self.prompt_cache_bytes:
            self.prompt_cache.popitem(last=False)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: [B, T] -> logits [B, T, V]; the cache advances by T positions.

        attn_mask: optional [B, T, T] bool, which new tokens each new token may see (a token tree;
        each token always sees the whole cache). None: causal among the new tokens.
        """
        return self._run(tokens, cache, None, tree_mask=attn_mask)

    def _run(self, ids: torch.Tensor, cache, new_mask: torch.Tensor | None,
             tree_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run ids [B, T] over the cache. new_mask [B, T]: 0 marks left padding; None: all real."""
        past = cache.attention_mask  # [B, L], or None while no row has padding
        b, t = ids.shape
        length = cache.length
        if past is None and new_mask is None:
            # no padding anywhere: positions are plain offsets and attention is plainly causal
            full = None
            positions = torch.arange(length, length + t, device=self.device).expand(b, t)  # [B, T]
        else:
            if past is None:
                past = torch.ones((b, length), dtype=torch.long, device=self.device)
            if new_mask is None:
                new_mask = torch.ones((b, t), dtype=torch.long, device=self.device)
            full = torch.cat([past, new_mask], dim=1)  # [B, L+T]
            # positions count real tokens only, as HF generate does for left-padded batches
            positions = (full.cumsum(-1) - 1).clamp(min=0)[:, -t:]  # [B, T]
        mask = full
        if tree_mask is not None:
            # tree depth, not index, gives a draft token's position
            positions = tree_positions(tree_mask, positions[:, 0])  # [B, T]
            if full is None:
                full = torch.ones((b, length + t), dtype=torch.long, device=self.device)
            # [B, 1, T, L+T]: padding of the past, tree structure among the new tokens
            mask = tree_attention_bias(full[:, :length], tree_mask.to(self.device), self.dtype)
        if self.attention == DEFAULT_BACKEND and self._recycled is None:
            logits = self._logits(ids, mask, positions, cache)
        else:
            if self._recycled is not None:
                self._recycled.advance()
            logits = self._logits(ids, None, positions, cache, ponder_plan=self._plan(cache, full, tree_mask, b, t))
        if full is not None:  # the mask grows with the cache; all ones (e.g. after a reorder) is no mask
            cache.attention_mask = full if bool((full == 0).any()) else None
        return logits

    def _plan(self, cache, full: torch.Tensor | None, tree_mask: torch.Tensor | None, rows: int,
              count: int) -> PlanContext:
        """What ponder's attention sees in this forward: the shared prefix (all of it, for every row),
        each row's suffix with its padding and rolled-back positions hidden, the tree among the new
        tokens. full: [B, L+T] 1 = real, or None (nothing hidden)."""
        start = cache.prefix_length
        size = cache.length - start + count  # the suffix after this forward's append
        hidden = None if full is None else (full[:, start:] == 0)  # [B, S]
        plan = AttentionPlan(lengths=torch.full((rows,), size, dtype=torch.long, device=self.device),
                             kv_length=size, num_queries=count, hidden=hidden,
                             tree=None if tree_mask is None else tree_mask.to(self.device), prefix_length=start)
        return PlanContext(plan, self.attention, cache.prefix_keys, cache.prefix_values, recycled=self._recycled)

    def _logits(self, ids: torch.Tensor, mask, positions: torch.Tensor, cache, **attention) -> torch.Tensor:
        """One forward of the wrapped model: float32 logits [B, T, V] (adapters that embed their
        inputs differently, e.g. Janus image tokens, override this and keep the masks and positions).
        attention: ``ponder_plan=`` under ponder's attention (passed down to every layer)."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_kwarg: cache}, **attention)
        return out.logits.float()

    # ---- Recycled Attention ----------------------------------------------------------------------

    @contextmanager
    def recycling(self, *, stride: int, top_k: int, dense_layers: int = 0) -> Iterator[RecycledAttention]:
        """Inside the block, forwards attend by Recycled Attention (`ponder.kernels.attention.recycled`):
        full attention every `stride` forwards, in between only the `top_k` positions per key/value
        head the last full step favoured plus the tokens since; the first `dense_layers` layers always
        attend in full. Lossy. A model on transformers' sdpa
        switches to ponder's attention for the block (same numbers on full steps)."""
        if self._recycled is not None:
            raise RuntimeError("recycling blocks do not nest")
        state = RecycledAttention(self.num_layers, stride=stride, top_k=top_k, backend=self.attention,
                                  dense_layers=dense_layers)
        switched = self.attention == DEFAULT_BACKEND
        previous = self.model.config._attn_implementation
        if switched:
            routable(self.model)
            switch_attention(self.model)
        self._recycled = state
        try:
            yield state
        finally:
            self._recycled = None
            if switched:
                self.model.set_attn_implementation(previous)

    # ---- what self-speculative decoders need ---------------------------------------------------

    def _layer_list(self):
        """The ModuleList of decoder layers (Llama / Qwen2 / Mistral: .layers, GPT-2: .h), or None."""
        base = self.model.base_model
        for attr in ("layers", "h"):
            layers = getattr(base, attr, None)
            if isinstance(layers, torch.nn.ModuleList):
                return base, attr, layers
        return None

    @contextmanager
    def skipping_layers(self, skip: Collection[int]) -> Iterator[None]:
        """Inside the block, forwards run without the decoder layers in `skip` (layer-skip drafting).

        The kept layers keep their own indices, so they read and write their own cache layers; the
        skipped layers write nothing (roll the cache back to before the block to drop what the kept
        layers wrote). Layer 0 must be kept: the cache's length is layer 0's.
        """
        found = self._layer_list()
        if found is None:
            raise ModelLoadError(f"model {self.name!r} ({type(self.model).__name__}) has no decoder layer list "
                                 "that layer skipping knows (.layers or .h)")
        base, attr, layers = found
        skip = set(skip)
        if 0 in skip or not skip <= set(range(len(layers))):
            raise ValueError(f"skip must be layers in [1, {len(layers)}), got {sorted(skip)}")
        setattr(base, attr, torch.nn.ModuleList([layer for i, layer in enumerate(layers) if i not in skip]))
        self._altered += 1
        try:
            yield
        finally:
            self._altered -= 1
            setattr(base, attr, layers)

    @contextmanager
    def capturing_hidden(self) -> Iterator[dict]:
        """Inside the block, every forward / prefill leaves the final hidden states (what the LM head
        reads) in the yielded dict under "hidden" ([B, T, H] float32) — what Medusa heads read."""
        box: dict = {}

        def grab(_module, args):
            box["hidden"] = args[0].float()  # [B, T, H]

        handle = self.model.get_output_embeddings().register_forward_pre_hook(grab)
        self._altered += 1
        try:
            yield box
        finally:
            self._altered -= 1
            handle.remove()
