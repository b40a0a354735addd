"""Tiny random diffusers pipelines of real classes, saved with save_pretrained (offline, seeded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

LABELS = ["zero", "one", "two"]


def class_unet_folder(root: Path, *, scheduler: str = "DDIMScheduler", prediction_type: str = "epsilon",
                      channels: int = 1, size: int = 8) -> Path:
    """A class-conditional UNet2DModel + scheduler in the layout `zoo:digits` uses."""
    import diffusers
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       num_class_embeds=len(LABELS))
    sched = getattr(diffusers, scheduler)(num_train_timesteps=100, prediction_type=prediction_type)
    folder = root / "class-unet"
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(i): lab for i, lab in enumerate(LABELS)}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def tiny_clip_tokenizer(max_length: int = 16):
    """A CLIPTokenizer over a vocabulary written here: single characters plus two merges."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["th"] = len(vocab)
    vocab["the</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[("t", "h"), ("th", "e</w>")], model_max_length=max_length)


def _clip_text_config(hidden: int = 16, projection: int = 16, max_length: int = 16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=32,
                          num_attention_heads=2, num_hidden_layers=2, vocab_size=80,
                          max_position_embeddings=max_length, projection_dim=projection)


def _tiny_vae(block_out=(4, 8), **extra):
    from diffusers import AutoencoderKL

    n = len(block_out)
    return AutoencoderKL(block_out_channels=list(block_out), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                         norm_num_groups=2 if block_out[0] % 2 == 0 else 1, layers_per_block=1, **extra)


def sd_folder(root: Path, scheduler: str = "DDIMScheduler") -> Path:
    """A tiny StableDiffusionPipeline (UNet2DConditionModel + CLIP text encoder + VAE), 16x16 pixels."""
    import diffusers
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=2, attention_head_dim=2)
    extra = {"timestep_spacing": "leading", "steps_offset": 1} if scheduler == "EulerDiscreteScheduler" else {}
    sched = getattr(diffusers, scheduler)(num_train_timesteps=100, beta_start=0.00085, beta_end=0.012,
                                          beta_schedule="scaled_linear", **extra)
    pipe = StableDiffusionPipeline(unet=unet, scheduler=sched, vae=_tiny_vae(), text_encoder=CLIPTextModel(
        _clip_text_config()), tokenizer=tiny_clip_tokenizer(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    folder = root / f"sd-{scheduler}"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def dit_folder(root: Path) -> Path:
    """A tiny DiTPipeline (DiTTransformer2DModel with learned sigma + VAE), 8x8 pixels, labelled classes."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(sample_size=4, patch_size=2, in_channels=4, out_channels=8, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, num_embeds_ada_norm=1000)
    # ada_norm_zero starts as the identity; random gates make the tiny network depend on its inputs
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pipe = DiTPipeline(transformer=transformer, vae=_tiny_vae(), scheduler=DDIMScheduler(num_train_timesteps=100))
    folder = root / "dit"
    pipe.save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {"0": "tench, Tinca tinca", "1": "goldfish"}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def sd3_folder(root: Path) -> Path:
    """A tiny StableDiffusion3Pipeline (two CLIP encoders, no T5; flow matching), 8x8 pixels."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=32, pooled_projection_dim=32, pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae((4,), shift_factor=0.06, scaling_factor=1.5, use_quant_conv=False,
                      use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(_clip_text_config()), tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config()), tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=None, tokenizer_3=None)
    folder = root / "sd3"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def sdxl_folder(root: Path) -> Path:
    """A tiny StableDiffusionXLPipeline (two CLIP encoders, text_time added conditioning), 16x16 pixels."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=2, attention_head_dim=2, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16)
    sched = DDIMScheduler(num_train_timesteps=100, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=CLIPTextModel(_clip_text_config()),
                                     text_encoder_2=CLIPTextModelWithProjection(_clip_text_config()),
                                     tokenizer=tiny_clip_tokenizer(), tokenizer_2=tiny_clip_tokenizer(), unet=unet,
                                     scheduler=sched, add_watermarker=False)
    folder = root / "sdxl"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
