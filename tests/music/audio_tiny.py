"""Tiny random diffusers audio pipelines of real classes, saved with save_pretrained (offline, seeded).

Tokenizers are built here from a written vocabulary (a Unigram T5 tokenizer, a byte-level BPE Roberta
tokenizer); the CLAP feature extractor is constructed locally. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "the", "drum", "piano", "loop", "slow", "fast", "bird", "rain", "song"]


def tiny_t5_tokenizer(max_length: int = 8):
    """A T5 (Unigram) tokenizer over WORDS plus single letters; ids: pad 0, eos 1, unk 2."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -3.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def tiny_roberta_tokenizer(max_length: int = 8):
    """A byte-level BPE Roberta tokenizer over single letters and two merges (the CLAP text tokenizer)."""
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "\u0120": 5}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab["\u0120" + c] = len(vocab)
    vocab["th"] = len(vocab)
    vocab["\u0120th"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[("t", "h"), ("\u0120", "th")], model_max_length=max_length)


def _t5_encoder(d_model: int = 16):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=64, d_model=d_model, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


COSINE_SCHEDULER = {"_class_name": "CosineDPMSolverMultistepScheduler", "_diffusers_version": "0.42.1",
                    "sigma_min": 0.3, "sigma_max": 500.0, "sigma_data": 1.0, "sigma_schedule": "exponential",
                    "num_train_timesteps": 1000, "solver_order": 2, "prediction_type": "v_prediction", "rho": 7.0,
                    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False,
                    "final_sigmas_type": "zero"}


def stable_audio_folder(root: Path, name: str = "stable-audio", **scheduler) -> Path:
    """A tiny StableAudioPipeline: DiT (1 layer, 2 heads of 8), Oobleck VAE (hop 4, stereo, 64 Hz),
    T5 encoder (1 layer, d 16) and projection; 16 latent frames = 1 s of audio."""
    from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel

    torch.manual_seed(0)
    transformer = StableAudioDiTModel(sample_size=16, in_channels=4, num_layers=1, attention_head_dim=8,
                                      num_attention_heads=2, num_key_value_attention_heads=1, out_channels=4,
                                      cross_attention_dim=16, time_proj_dim=8, global_states_input_dim=32,
                                      cross_attention_input_dim=16)
    vae = AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=[2, 2], channel_multiples=[1, 2],
                             decoder_channels=6, decoder_input_channels=4, audio_channels=2, sampling_rate=64)
    projection = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=16, min_value=0, max_value=4)
    pipe = StableAudioPipeline(vae=vae, text_encoder=_t5_encoder(), projection_model=projection,
                               tokenizer=tiny_t5_tokenizer(), transformer=transformer, scheduler=None)
    folder = root / name
    pipe.save_pretrained(folder, safe_serialization=True)
    # the scheduler as Stable Audio Open ships it; written by hand because diffusers' class needs torchsde
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(COSINE_SCHEDULER, **scheduler)))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "CosineDPMSolverMultistepScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def audioldm2_folder(root: Path) -> Path:
    """A tiny AudioLDM2Pipeline: AudioLDM2 UNet (2 blocks of 8/16), mel VAE (factor 2), HiFi-GAN vocoder
    (16 mel bins, x8 upsampling, 64 Hz), CLAP (text + audio), T5, projection and GPT-2 (1 layer, 4 new tokens)."""
    from diffusers import AudioLDM2Pipeline, AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from diffusers.pipelines.audioldm2 import AudioLDM2ProjectionModel
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    torch.manual_seed(0)
    unet = AudioLDM2UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                                         sample_size=8, in_channels=4, out_channels=4,
                                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                         cross_attention_dim=([None, 16, 16], [None, 16, 16]))
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=1, out_channels=1, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8, layers_per_block=1)
    text_config = ClapTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16,
                                 intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=64,
                                 max_position_embeddings=24, projection_dim=16)
    audio_config = ClapAudioConfig(spec_size=16, window_size=4, num_mel_bins=16, intermediate_size=16,
                                   depths=[1, 1], num_attention_heads=[2, 2], num_hidden_layers=1, hidden_size=16,
                                   patch_size=2, patch_stride=2, patch_embed_input_channels=4, projection_dim=16)
    clap = ClapModel(ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
                                projection_dim=16))
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=64, n_positions=32,
                                                 bos_token_id=0, eos_token_id=2))
    language_model.config.max_new_tokens = 4
    projection = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=16, langauge_model_dim=16)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(model_in_dim=16, sampling_rate=64, upsample_initial_channel=8,
                                                    upsample_rates=[2, 4], upsample_kernel_sizes=[4, 8],
                                                    resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
                                                    normalize_before=False, initializer_range=0.3))
    features = ClapFeatureExtractor(feature_size=16, sampling_rate=64, hop_length=8, max_length_s=1,
                                    fft_window_size=32, frequency_max=32)
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_start=0.0015, beta_end=0.0195,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    pipe = AudioLDM2Pipeline(vae=vae, text_encoder=clap, text_encoder_2=_t5_encoder(), projection_model=projection,
                             language_model=language_model, tokenizer=tiny_roberta_tokenizer(16),
                             tokenizer_2=tiny_t5_tokenizer(), feature_extractor=features, unet=unet,
                             scheduler=scheduler, vocoder=vocoder)
    folder = root / "audioldm2"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
