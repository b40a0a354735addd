"""Autoregressive images as a `SequenceModel`: a causal LM over patch-codebook tokens.

An image is a raster-order grid of codebook tokens (`ponder.modalities.image.vq`); the prompt is a
class token after BOS. The LM is any transformers causal LM (the zoo's `digits-ar` is a
`LlamaForCausalLM`) and runs over the text model's KV cache and forward (`TextModel`), so every
decoder in `ponder.search.decoding` — plain, speculative Jacobi (SJD, MC-SJD), greedy Jacobi —
drives it unchanged. Logits of ids that are not image codes (class tokens, BOS) are -inf, so
nothing but codes is ever sampled.

A model folder holds the LM (``config.json`` + safetensors), ``codebook.safetensors`` and
``image_tokens.json`` (the id layout); ``card.json`` when ponder trained it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ponder.errors import InputError, ModelLoadError
from ponder.modalities.image.vq import CODEBOOK_FILE, PatchCodebook
from ponder.modalities.text.model import TextModel

LAYOUT_FILE = "image_tokens.json"


@dataclass
class ImageTokens:
    """The id layout of an AR image model: codes first, then one token per class, then BOS.

    It stands where a text model's tokenizer stands (`TextModel` reads its pad / EOS ids): images
    have a fixed token count, so there is no EOS.
    """

    num_codes: int  # ids [0, num_codes) are codebook entries
    class_names: list[str]  # class c is id num_codes + c
    tokens_per_image: int  # grid * grid
    row_tokens: int  # tokens per image row (the grid width)

    eos_token_id = None  # fixed-length images: no end token

    @property
    def bos_token_id(self) -> int:
        return self.num_codes + len(self.class_names)

    @property
    def pad_token_id(self) -> int:
        return self.bos_token_id  # prompts all have one length; padding never reaches the model

    @property
    def vocab_size(self) -> int:
        return self.bos_token_id + 1

    @property
    def model_max_length(self) -> int:
        return 2 + self.tokens_per_image  # BOS, class, image

    def class_index(self, prompt) -> int:
        """A class name ("7") or index (7) -> its index; InputError naming the allowed classes."""
        names = self.class_names
        if isinstance(prompt, str) and prompt.strip() in names:
            return names.index(prompt.strip())
        if isinstance(prompt, int) and not isinstance(prompt, bool) and 0 <= prompt < len(names):
            return prompt
        raise InputError(f"prompt {prompt!r} is not a class of this class-conditional image model; "
                         f"allowed: {', '.join(names)}")

    def save(self, folder: Path) -> None:
        (Path(folder) / LAYOUT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ImageTokens:
        path = Path(folder) / LAYOUT_FILE
        if not path.is_file():
            raise ModelLoadError(f"{str(folder)!r} has no {LAYOUT_FILE} (the token layout of an AR image model)")
        return cls(**json.loads(path.read_text()))


class ARImageModel(TextModel):
    """A `SequenceModel` over image tokens: encode(class) -> [BOS, class], decode(codes) -> PIL image.

    `row_tokens` (tokens per image row) lets Jacobi-style decoders initialise a draft from the
    token one image row above; `tokens_per_image` is the number of new tokens that make an image.
    """

    modality = "image"

    def __init__(self, model, codebook: PatchCodebook, layout: ImageTokens, name: str = "model",
                 card: dict | None = None):
        if codebook.num_codes != layout.num_codes or codebook.tokens_per_image != layout.tokens_per_image:
            raise ModelLoadError(f"codebook ({codebook.num_codes} codes, {codebook.tokens_per_image} tokens per image) "
                                 f"does not match the token layout ({layout.num_codes}, {layout.tokens_per_image})")
        if model.config.get_text_config(decoder=True).vocab_size < layout.vocab_size:
            raise ModelLoadError(f"the LM's vocabulary is smaller than the token layout's {layout.vocab_size} ids")
        super().__init__(model, layout, name=name, card=card)
        self.codebook, self.layout = codebook, layout
        self.eos_token_ids = frozenset()
        self.tokens_per_image, self.row_tokens = layout.tokens_per_image, layout.row_tokens
        self.class_names = list(layout.class_names)

    @classmethod
    def from_folder(cls, path: str | Path, *, dtype: str | None = None, device: str = "cpu",
                    name: str | None = None, trust_remote_code: bool = False) -> ARImageModel:
        """Load an AR image model folder (LM + ``codebook.safetensors`` + ``image_tokens.json``), offline."""
        from transformers import AutoModelForCausalLM

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"AR image model folder {str(path)!r} has no config.json; expected a folder "
                                 "written by save_pretrained with codebook.safetensors and image_tokens.json")
        codebook, layout = PatchCodebook.load(folder), ImageTokens.load(folder)
        allowed = {None: torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}
        if dtype not in allowed:
            raise ModelLoadError(f"dtype {dtype!r} is not allowed; use one of float32, bfloat16, float16")
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                         dtype=allowed[dtype],
                                                         trust_remote_code=trust_remote_code).to(device)
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"cannot load the AR image LM from {str(folder)!r}: {err}") from err
        card_file = folder / "card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        return cls(model, codebook, layout, name=name or folder.name, card=card)

    def save(self, folder: Path) -> None:
        """Write the LM, codebook and layout into `folder` (what `from_folder` reads)."""
        folder = Path(folder)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.codebook.save(folder)
        self.layout.save(folder)

    # ---- SequenceModel -------------------------------------------------------------------------

    def encode(self, prompt) -> list[int]:
        """A class name or index -> [BOS, class token]."""
        return [self.layout.bos_token_id, self.layout.num_codes + self.layout.class_index(prompt)]

    def decode(self, ids: Sequence[int]):
        """Image token ids -> a grayscale PIL image; a short row is completed with background."""
        from PIL import Image

        return Image.fromarray(self.pixels([ids])[0].numpy(), mode="L")

    def pixels(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token rows -> uint8 images [N, S, S]; rows shorter than an image end in background codes."""
        grid = torch.full((len(rows), self.tokens_per_image), self.codebook.background(), dtype=torch.long)
        for r, ids in enumerate(rows):
            ids = list(ids)[: self.tokens_per_image]
            if ids:
                grid[r, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        images = self.codebook.decode(grid)  # [N, S, S] in [-1, 1]
        return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def images(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token rows -> float images [N, 1, S, S] in [-1, 1] (what the digits classifiers take)."""
        return self.pixels(rows).float()[:, None] / 127.5 - 1

    def check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        """InputError unless `max_new_tokens` is in [1, tokens_per_image] (the image size this model makes)."""
        if not 1 <= max_new_tokens <= self.tokens_per_image:
            raise InputError(f"max_new_tokens={max_new_tokens} is not a size this model can make: an image is "
                             f"{self.tokens_per_image} tokens ({self.codebook.image_size}x{self.codebook.image_size} "
                             f"pixels); use 1..{self.tokens_per_image}")

    def _run(self, ids, cache, new_mask, tree_mask=None) -> torch.Tensor:
        logits = super()._run(ids, cache, new_mask, tree_mask)  # [B, T, V]
        logits[..., self.layout.num_codes:] = float("-inf")  # only image codes are ever sampled
        return logits


def load_ar(folder, name: str | None = None, **options):
    """Load an autoregressive image model from a local folder (what `ponder.load("image", ...)` calls
    for folders that are not diffusers pipelines): a codebook model (`ARImageModel`) or a Janus
    folder (`janus.JanusImageModel`; option ``guidance_scale=``)."""
    from ponder.modalities.image.janus import JanusImageModel, is_janus_folder

    folder = Path(folder)
    if (folder / CODEBOOK_FILE).is_file():
        return ARImageModel.from_folder(folder, name=name, **options)
    if is_janus_folder(folder):
        return JanusImageModel.from_folder(folder, name=name, **options)
    raise ModelLoadError(f"{str(folder)!r} is neither a diffusers pipeline (model_index.json) nor an AR image model "
                         f"({CODEBOOK_FILE} + {LAYOUT_FILE} + a causal LM, or a JanusForConditionalGeneration folder)")


__all__ = ["ARImageModel", "ImageTokens", "load_ar"]
