"""Text as a `SequenceModel`: any Hugging Face causal LM + tokenizer from a local folder.

The model runs over ponder's own KV cache (`ponder.kernels.KVCache`, preallocated, truncatable),
bridged into transformers' `Cache` interface, with left padding, per-row attention masks and
per-row positions kept beside it — so decoders in `ponder.search.decoding` can drive Llama, Qwen2,
GPT-2 … step by step, roll back rejected tokens, and reorder rows, without `model.generate`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ponder.errors import InputError, ModelLoadError
from ponder.kernels import KVCache
from ponder.kernels.tree import tree_attention_bias, tree_positions
from ponder.modalities.text.answers import extract_answer

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _hf_cache_classes():
    """Build the transformers `Cache` bridge lazily, so importing this module stays light."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    class _Layer(CacheLayerMixin):
        """One decoder layer's view onto the shared ponder `KVCache`."""

        is_sliding = False
        is_croppable = True

        def __init__(self, store: KVCache, index: int):
            super().__init__()
            self.store, self.index = store, index

        def lazy_initialization(self, key_states, value_states):
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            # key_states, value_states: [B, H, T, D] -> whole stored [B, H, L+T, D]
            self.is_initialized = True
            return self.store.append(self.index, key_states, value_states)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.get_seq_length() + query_length, 0

        def get_seq_length(self) -> int:
            return self.store.layer_length(self.index)

        def get_max_length(self) -> int:
            return -1

        def reset(self) -> None:
            self.store.reset()

        def crop(self, tokens_to_remove: int) -> None:
            raise RuntimeError("crop a TextCache through TextCache.crop / truncate, not per layer")

        def reorder_cache(self, beam_idx):
            raise RuntimeError("reorder a TextCache through TextCache.reorder, not per layer")

    class TextCache(Cache):
        """ponder's KV cache for one batch of a text model, plus its padding mask.

        length: positions stored (left padding included), shared by every row.
        attention_mask: [B, length] 1 for real tokens, 0 for left padding; None while no row is padded.
        """

        def __init__(self, num_layers: int, capacity: int = 256):
            self.store = KVCache(num_layers, capacity=capacity)
            super().__init__(layers=[_Layer(self.store, i) for i in range(num_layers)])
            self.attention_mask: torch.Tensor | None = None  # [B, length]

        @property
        def length(self) -> int:
            return self.store.length

        def truncate(self, length: int) -> None:
            """Roll back to the first `length` positions (rejected draft tokens, ...)."""
            self.store.truncate(length)
            if self.attention_mask is not None:
                self.attention_mask = self.attention_mask[:, :length]

        def hide(self, hidden: torch.Tensor) -> None:
            """Per-row rollback: positions marked in `hidden` [B, length] (bool) are never attended
            to again and no longer count toward later tokens' positions — a row's rejected draft
            tokens become holes, as if never fed, while other rows keep theirs (shared length)."""
            if tuple(hidden.shape) != (self.store.batch_size, self.length):
                raise ValueError(f"hide takes a [B, length] mask of shape {(self.store.batch_size, self.length)}, "
                                 f"got {tuple(hidden.shape)}")
            mask = self.attention_mask
            if mask is None:
                mask = torch.ones(tuple(hidden.shape), dtype=torch.long, device=self.store.keys(0).device)
            self.attention_mask = mask.masked_fill(hidden.to(mask.device), 0)

        def select_positions(self, start: int, index: torch.Tensor) -> None:
            """Row b's position start + index[b, j] moves to start + j; length becomes start + N.
            index: [B, N]. Compacts a verified tree's accepted path (see `KVCache.select_positions`)."""
            with torch.inference_mode():  # the buffers are inference tensors (written under forward)
                self.store.select_positions(start, index)
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

    return TextCache


_TEXT_CACHE = None


def text_cache_class():
    global _TEXT_CACHE
    if _TEXT_CACHE is None:
        _TEXT_CACHE = _hf_cache_classes()
    return _TEXT_CACHE


class TextModel:
    """A `SequenceModel` over a transformers causal LM and its tokenizer.

    Build it with `TextModel.from_folder(path)` (what `ponder.load("text", path)` does) or wrap an
    already loaded model and tokenizer.
    """

    modality = "text"

    def __init__(self, model, tokenizer, name: str = "model", card: dict | None = None):
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

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path, *, trust_remote_code: bool = False, dtype: str | None = None,
                    device: str = "cpu", name: str | None = None) -> TextModel:
        """Load a causal LM and tokenizer saved with `save_pretrained` (safetensors only, offline).

        dtype: "float32" | "bfloat16" | "float16" | None (None: float32 on CPU, the saved dtype
        elsewhere — CPUs are slow or inexact in half precision).
        """
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
        return cls(model, tokenizer, name=name or folder.name, card=card)

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
        return text_cache_class()(self.num_layers, capacity=capacity)

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
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)  # [B, T]
        for row, p in enumerate(prompt_ids):
            if len(p):
                ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
                mask[row, width - len(p):] = 1
        padded = any(len(p) != width for p in prompt_ids)
        return self._run(ids.to(self.device), cache, mask.to(self.device) if padded else None)[:, -1]

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
        logits = self._logits(ids, mask, positions, cache)
        if full is not None and bool((full == 0).any()):
            cache.attention_mask = full
        return logits

    def _logits(self, ids: torch.Tensor, mask, positions: torch.Tensor, cache) -> torch.Tensor:
        """One forward of the wrapped model: float32 logits [B, T, V] (adapters that embed their
        inputs differently, e.g. Janus image tokens, override this and keep the masks and positions)."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_kwarg: cache})
        return out.logits.float()

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
        try:
            yield
        finally:
            setattr(base, attr, layers)

    @contextmanager
    def capturing_hidden(self) -> Iterator[dict]:
        """Inside the block, every forward / prefill leaves the final hidden states (what the LM head
        reads) in the yielded dict under "hidden" ([B, T, H] float32) — what Medusa heads read."""
        box: dict = {}

        def grab(_module, args):
            box["hidden"] = args[0].float()  # [B, T, H]

        handle = self.model.get_output_embeddings().register_forward_pre_hook(grab)
        try:
            yield box
        finally:
            handle.remove()
