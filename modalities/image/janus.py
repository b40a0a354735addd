"""Janus image generation as a `SequenceModel`: transformers' `JanusForConditionalGeneration` from a folder.

Janus (Wu et al. 2024, *Janus: Decoupling Visual Encoding for Unified Multimodal Understanding and
Generation*; Janus-Pro, Chen et al. 2025) generates an image as a sequence of VQ tokens after the
text prompt and its begin-of-image token: image tokens enter the Llama backbone through
`generation_embeddings` + `generation_aligner`, logits come from `generation_head`, and every step
runs a conditional row and an unconditional row (prompt tokens other than BOS / begin-of-image
replaced by padding), mixed by classifier-free guidance: uncond + scale * (cond - uncond), as
transformers' own `generate(generation_mode="image")` does. The VQ decoder turns the tokens into
pixels.

The backbone runs over the text model's KV cache and forward (`TextModel`; masks, positions,
rollback) with the batch doubled inside the cache, so every decoder in `ponder.search.decoding`
(plain, SJD, MC-SJD, Jacobi, ...) drives Janus unchanged.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ponder.errors import InputError, ModelLoadError
from ponder.modalities.text.model import TextModel, text_cache_class


class GuidedCache:
    """A cache for B rows that stores 2B: rows [0, B) conditional, [B, 2B) unconditional.

    Decoders see B rows; every rollback, reorder or hide applies to both halves alike."""

    def __init__(self, inner):
        self.inner = inner  # TextCache over 2B rows

    @property
    def length(self) -> int:
        return self.inner.length

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def reorder(self, index: torch.Tensor) -> None:
        half = self.inner.store.batch_size // 2
        self.inner.reorder(torch.cat([index, index + half]))  # [2B']

    def hide(self, hidden: torch.Tensor) -> None:
        self.inner.hide(torch.cat([hidden, hidden]))  # [2B, length]

    def select_positions(self, start: int, index: torch.Tensor) -> None:
        self.inner.select_positions(start, torch.cat([index, index]))  # [2B, N]


class JanusImageModel(TextModel):
    """A `SequenceModel` over Janus image tokens: encode(text) -> prompt ids + begin-of-image,
    decode(image token ids) -> a PIL RGB image. `guidance_scale` is the classifier-free guidance scale."""

    modality = "image"

    def __init__(self, model, tokenizer, *, guidance_scale: float | None = None, name: str = "model",
                 card: dict | None = None):
        super().__init__(model, tokenizer, name=name, card=card)
        config = model.config
        gen = model.generation_config
        self.context_length = int(config.text_config.max_position_embeddings)
        self.eos_token_ids = frozenset()  # an image is a fixed number of tokens
        self.tokens_per_image = int(config.vision_config.num_image_tokens)
        self.row_tokens = math.isqrt(self.tokens_per_image)
        boi = (getattr(gen, "generation_kwargs", None) or {}).get("boi_token_id")
        if boi is None:
            boi = tokenizer.convert_tokens_to_ids("<begin_of_image>")
            if boi is None or boi == tokenizer.unk_token_id:
                raise ModelLoadError("cannot find Janus' begin-of-image token: neither generation_config."
                                     "generation_kwargs['boi_token_id'] nor a '<begin_of_image>' token")
        self.boi_token_id = int(boi)
        self.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else gen.bos_token_id
        scale = guidance_scale if guidance_scale is not None else getattr(gen, "guidance_scale", None) or 5.0
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ModelLoadError(f"guidance_scale must be a positive number, got {scale!r}")
        self.guidance_scale = float(scale)
        self._backbone = model.model.language_model
        params = inspect.signature(self._backbone.forward).parameters
        self._backbone_cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._text_input = False

    @classmethod
    def from_folder(cls, path: str | Path, *, guidance_scale: float | None = None, dtype: str | None = None,
                    device: str = "cpu", name: str | None = None, trust_remote_code: bool = False) -> JanusImageModel:
        """Load a `JanusForConditionalGeneration` folder (weights, tokenizer; safetensors, offline)."""
        from transformers import AutoTokenizer, JanusForConditionalGeneration

        folder = Path(path).expanduser()
        allowed = {None: torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}
        if dtype not in allowed:
            raise ModelLoadError(f"dtype {dtype!r} is not allowed; use one of float32, bfloat16, float16")
        try:
            model = JanusForConditionalGeneration.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, dtype=allowed[dtype]).to(device)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                      trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"cannot load a Janus model from {str(folder)!r}: {err}") from err
        card_file = folder / "card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        return cls(model, tokenizer, guidance_scale=guidance_scale, name=name or folder.name, card=card)

    # ---- SequenceModel -------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """Prompt text (in the model's own chat format) -> its ids, then the begin-of-image token."""
        if not isinstance(prompt, str) or not prompt:
            raise InputError(f"prompt must be a non-empty string, got {prompt!r}")
        return list(self.tokenizer(prompt)["input_ids"]) + [self.boi_token_id]

    def decode(self, ids: Sequence[int]):
        """Image token ids -> a PIL RGB image through the VQ decoder (a short row ends in token 0)."""
        from PIL import Image

        ids = list(ids)[: self.tokens_per_image]
        row = torch.zeros((1, self.tokens_per_image), dtype=torch.long)
        if ids:
            row[0, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        with torch.inference_mode():
            pixels = self.model.decode_image_tokens(row.to(self.device))[0].float().cpu()  # [H, W, 3] in [-1, 1]
        return Image.fromarray(((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy(), mode="RGB")

    def check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        """InputError unless `max_new_tokens` is in [1, tokens_per_image] and fits the context."""
        if not 1 <= max_new_tokens <= self.tokens_per_image:
            raise InputError(f"max_new_tokens={max_new_tokens} is not a size this model can make: an image is "
                             f"{self.tokens_per_image} tokens; use 1..{self.tokens_per_image}")
        super().check_length(prompt_len, max_new_tokens)

    def new_cache(self, capacity: int = 256) -> GuidedCache:
        return GuidedCache(text_cache_class()(self.num_layers, capacity=capacity))

    def _run(self, ids: torch.Tensor, cache, new_mask: torch.Tensor | None,
             tree_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch = ids.shape[0]
        self._text_input = cache.length == 0  # the prefill feeds prompt text, later calls image tokens
        if self._text_input:
            keep = (ids == self.bos_token_id) | (ids == self.boi_token_id)
            uncond = ids.masked_fill(~keep, self.pad_token_id)  # [B, T]: the unconditional prompt
        else:
            uncond = ids
        logits = super()._run(torch.cat([ids, uncond]), cache.inner, _doubled(new_mask), _doubled(tree_mask))
        cond, free = logits.split(batch)  # [B, T, V] each
        return free + self.guidance_scale * (cond - free)

    def _logits(self, ids: torch.Tensor, mask, positions: torch.Tensor, cache) -> torch.Tensor:
        if self._text_input:
            embeds = self.model.get_input_embeddings()(ids)  # [2B, T, H]
        else:
            embeds = self.model.prepare_embeddings_for_image_generation(ids)  # [2B, T, H]
        hidden = self._backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                                **{self._backbone_cache_kwarg: cache}).last_hidden_state
        return self.model.model.generation_head(hidden).float()  # [2B, T, V_image]


def _doubled(x: torch.Tensor | None) -> torch.Tensor | None:
    """A per-row tensor for the conditional and the unconditional half: [B, ...] -> [2B, ...]."""
    return None if x is None else torch.cat([x, x])


def is_janus_folder(folder: Path) -> bool:
    config = Path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "janus"


__all__ = ["GuidedCache", "JanusImageModel", "is_janus_folder"]
