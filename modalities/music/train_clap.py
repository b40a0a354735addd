"""The ``tones-clap`` zoo recipe: a tiny CLAP that the ``text`` control (`controls.TextAdherence`) scores with.

**Model.** A transformers `ClapModel` (Wu et al. 2023, "Large-scale Contrastive Language-Audio
Pretraining"), unfused (``enable_fusion=False``, as `TextAdherence` needs): an HTSAT (Swin) audio encoder
over a 32-band log-mel of the whole 4 s clip, and a RoBERTa text encoder, each projected to a shared
32-dimensional space. It ships with a `ClapProcessor`: a `RobertaTokenizer` whose byte-level BPE is
trained here with the `tokenizers` library on the tag vocabulary (`tones.TAG_VOCAB`; every tag word is one
token, any other text falls back to bytes), and a `ClapFeatureExtractor` at 16 kHz (1024-sample FFT,
512-sample hop: 126 frames, which HTSAT's 64 x 64 input takes as two 64-frame halves stacked in
frequency). `controls.load_clap(folder)` loads it through the same path as a user's CLAP.

**Objective.** InfoNCE both ways (text -> audio and audio -> text over the batch, learned temperatures
``logit_scale_t`` / ``logit_scale_a``). A batch of 32 clips over 36 tag combinations holds repeats, so
every pair with the same tags is a positive (the target row is uniform over them) rather than a false
negative. Prompts are the clips' tags (``"pluck, high, fast"``), in a random order of the three words
half of the time (a user may write ``"fast pluck"``); each clip is circularly shifted in time.

**Data.** The teacher half of the train split (`train_judge.half_of`: everything search uses trains
there; the bench's judge trains on the other half), the first 3000 seeds; log-mel features computed once
per run. Metrics on the first 400 held-out seeds: text -> audio top-1 (for each tag combination present,
is the held-out clip closest to its text one of that combination), audio -> text top-1 among all 36
combinations, and per-group accuracies of that choice, with chance levels beside them.

**Size and time.** 407 728 parameters (1.6 MB in float32): audio 304 302, text 95 104, the rest the
projections and temperatures. Measured on the 2 CPU cores (batch 32): 15 steps/s when the machine was
otherwise idle, ~1 step/s while other jobs loaded it heavily; data and features take 25-140 s. So the
3000 steps take ~4 minutes (idle); on a machine shared that heavily they would take ~50. A 500-step probe
reached held-out audio -> text top-1 0.40 and text -> audio top-1 0.44 (chance 0.028), timbre 0.995,
register 0.96, tempo word 0.43 (the hard group, still rising), hence the six times longer recipe.
Checkpoints every 250 steps under ``zoo_dir/tones-clap/checkpoint`` (resumed after an interruption, kept
after the run); the final folder is written atomically.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ponder.errors import ZooError, check_int
from ponder.modalities.music import tones
from ponder.modalities.music.train_judge import fit_resumable, half_seeds, n_params, save_zoo_folder, step_generator

NAME = "tones-clap"
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's ids 0..4 (pad = 1, as ClapTextConfig)
COMBOS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(tones.TIMBRES, tones.REGISTERS, tones.TEMPO_WORDS))


@dataclass
class ClapRecipe:
    """The CLAP's hyper-parameters; written into the card so the run can be reproduced."""

    steps: int = 3000  # optimiser steps (fixed, so reruns match): 32 epochs of the 3000 clips
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    seed: int = 4
    train_clips: int = 3000  # teacher-half clips
    heldout_clips: int = 400
    num_mel_bins: int = 32  # mel bands of the feature extractor = the audio encoder's input width
    fft_window_size: int = 1024  # 64 ms at 16 kHz
    hop_length: int = 512  # 32 ms: 126 frames for 4 s, within HTSAT's 128 (spec_size * freq_ratio)
    frequency_min: float = 50.0  # below the lowest fundamental (C3, 131 Hz)
    frequency_max: float = 8000.0  # Nyquist
    spec_size: int = 64  # HTSAT's square input; freq_ratio = spec_size // num_mel_bins = 2
    audio_patch_hidden: int = 32  # width of the first Swin stage, doubled at each later one
    audio_depths: tuple[int, ...] = (1, 1, 1)  # Swin blocks per stage: 16x16, 8x8, 4x4 patch grids
    audio_heads: tuple[int, ...] = (2, 4, 8)
    window_size: int = 4  # Swin attention windows of 4x4 patches
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 128
    max_text_tokens: int = 64  # the tokenizer's model_max_length; positions for it (+2, RoBERTa's offset)
    projection_dim: int = 32
    shuffle_prob: float = 0.5  # share of prompts whose three tags are shown in a random order
    max_shift_frames: int = 126  # circular time shift drawn in [0, max_shift_frames) per example
    checkpoint_every: int = 250
    tag_vocab: list[str] = field(default_factory=lambda: list(tones.TAG_VOCAB))  # what the tokenizer learns


SMOKE = {"steps": 2, "batch_size": 4, "train_clips": 8, "heldout_clips": 6, "audio_patch_hidden": 8,
         "audio_depths": (1, 1), "audio_heads": (1, 2), "text_hidden": 16, "text_layers": 1, "text_heads": 2,
         "text_intermediate": 32, "projection_dim": 8, "checkpoint_every": 1}


def build_tokenizer(cfg: ClapRecipe):
    """A `RobertaTokenizer` with a byte-level BPE trained (`tokenizers`) on every ordering of every tag
    combination: each tag word becomes a single token (with and without its leading space); the full byte
    alphabet stays in the vocabulary, so any other text still tokenizes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizer

    texts = [", ".join(order) for combo in COMBOS for order in itertools.permutations(combo)]
    texts += list(cfg.tag_vocab)  # a tag on its own is a prompt too
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]  # ["a", "b"] pairs (or "a b" strings in older tokenizers)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges, model_max_length=cfg.max_text_tokens)


def feature_extractor(cfg: ClapRecipe, sample_rate: int, seconds: float):
    """The `ClapFeatureExtractor` the model ships: log-mel (dB) of `cfg.num_mel_bins` Slaney bands, whole
    `seconds`-long clips (``rand_trunc`` crops only longer ones; shorter ones are repeat-padded)."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(feature_size=cfg.num_mel_bins, sampling_rate=sample_rate, hop_length=cfg.hop_length,
                                max_length_s=int(round(seconds)), fft_window_size=cfg.fft_window_size,
                                frequency_min=cfg.frequency_min, frequency_max=cfg.frequency_max,
                                truncation="rand_trunc", padding="repeatpad")


def build_model(cfg: ClapRecipe, vocab_size: int):
    """A freshly initialised unfused `ClapModel` of the recipe's widths (no dropout: resumes are exact)."""
    from transformers import ClapConfig, ClapModel

    stages = len(cfg.audio_depths)
    audio_width = cfg.audio_patch_hidden * 2 ** (stages - 1)  # the last Swin stage's width, what is pooled
    text = dict(vocab_size=vocab_size, hidden_size=cfg.text_hidden, num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_intermediate,
                max_position_embeddings=cfg.max_text_tokens + 2, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, pad_token_id=SPECIAL_TOKENS.index("<pad>"))
    audio = dict(window_size=cfg.window_size, num_mel_bins=cfg.num_mel_bins, spec_size=cfg.spec_size, patch_size=4,
                 patch_stride=4, hidden_size=audio_width, depths=list(cfg.audio_depths),
                 num_attention_heads=list(cfg.audio_heads), patch_embeds_hidden_size=cfg.audio_patch_hidden,
                 enable_fusion=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    return ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=cfg.projection_dim))


def combo_index(clip: tones.Clip) -> int:
    """The index of a clip's (timbre, register, tempo word) in `COMBOS`."""
    return COMBOS.index((clip.timbre, clip.register, clip.tempo_word))


def _features(clips: list[tones.Clip], extractor) -> torch.Tensor:
    """The extractor's log-mel of clips: float32 [N, 1, frames, mels], in chunks."""
    chunks = [extractor([c.waveform.astype(np.float64) for c in clips[i:i + 256]],
                        sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_features"]
              for i in range(0, len(clips), 256)]
    return torch.cat(chunks).float()


def _pooled(output) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the (normalised) projected embedding
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Unit CLAP text embeddings: [len(texts), D]."""
    ids = tokenizer(texts, padding=True, return_tensors="pt")
    return F.normalize(_pooled(model.get_text_features(**ids)).float(), dim=-1)


@torch.no_grad()
def embed_audio(model, features: torch.Tensor) -> torch.Tensor:
    """Unit CLAP audio embeddings of features [N, 1, frames, mels]: [N, D]."""
    out = [_pooled(model.get_audio_features(input_features=features[i:i + 128])) for i in range(0, len(features), 128)]
    return F.normalize(torch.cat(out).float(), dim=-1)


def retrieval_metrics(model, tokenizer, features: torch.Tensor, combos: torch.Tensor) -> dict:
    """Retrieval among the tag combinations on clips' features [N, 1, frames, mels] with combo ids [N].

    text_to_audio_top1: over the combinations present, the share whose text's nearest clip has them
    (chance: the mean share of clips with each). audio_to_text_top1: the share of clips whose nearest of
    the 36 combination texts is their own (chance 1/36); ``*_accuracy``: per group, from that choice.
    """
    texts = [", ".join(combo) for combo in COMBOS]
    sim = embed_audio(model, features) @ embed_texts(model, tokenizer, texts).T  # [N, 36] cosine
    present = combos.unique()  # [P]
    nearest_clip = sim[:, present].argmax(0)  # [P]
    pred = sim.argmax(1)  # [N]
    out = {"text_to_audio_top1": float((combos[nearest_clip] == present).float().mean()),
           "text_to_audio_chance": float(torch.stack([(combos == c).float().mean() for c in present]).mean()),
           "audio_to_text_top1": float((pred == combos).float().mean()),
           "audio_to_text_chance": 1.0 / len(COMBOS)}
    for k, group in enumerate(("timbre", "register", "tempo")):
        right = [COMBOS[int(p)][k] == COMBOS[int(c)][k] for p, c in zip(pred, combos)]
        out[f"{group}_accuracy"] = float(np.mean(right))
    return {k: round(v, 4) for k, v in out.items()}


def train(name: str, zoo_dir: Path, log=print, steps: int | None = None, smoke: bool = False) -> dict:
    """Train ``tones-clap`` into ``zoo_dir/tones-clap`` and return its card.

    steps: override the recipe's optimiser steps (a checkpoint of the same recipe is resumed / extended).
    smoke: a tiny model on a few clips for 2 steps (seconds).
    """
    if name != NAME:
        raise ZooError(f"the tones-clap recipe trains {NAME!r} only, not {name!r}")
    cfg = ClapRecipe(**SMOKE) if smoke else ClapRecipe()
    if steps is not None:
        cfg = replace(cfg, steps=check_int("steps", steps))
    out_dir = Path(zoo_dir) / NAME
    from transformers import ClapProcessor

    tokenizer = build_tokenizer(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(tokenizer))

    t0 = time.time()
    train_seeds = half_seeds("teacher", cfg.train_clips)
    train_clips = [tones.generate(s) for s in train_seeds]
    held_clips = list(tones.clips("heldout", cfg.heldout_clips))
    extractor = feature_extractor(cfg, train_clips[0].sample_rate, train_clips[0].seconds)
    x, xh = _features(train_clips, extractor), _features(held_clips, extractor)  # [N, 1, F, M], [H, 1, F, M]
    combos = torch.tensor([combo_index(c) for c in train_clips])  # [N]
    combos_h = torch.tensor([combo_index(c) for c in held_clips])  # [H]
    # every prompt a step can show: each combination in each order of its three words, tokenized once
    orders = list(itertools.permutations(range(3)))  # order 0 is the canonical (timbre, register, tempo)
    prompts = [", ".join(combo[i] for i in order) for combo in COMBOS for order in orders]
    ids = tokenizer(prompts, padding=True, return_tensors="pt")  # [36 * 6, L]
    data_seconds = time.time() - t0
    log(f"[{NAME}] {len(train_clips)} teacher-half clips, {len(held_clips)} held-out, features {tuple(x.shape)} "
        f"in {data_seconds:.0f}s; {n_params(model):,} parameters, vocabulary {len(tokenizer)}")

    def loss_fn(step: int) -> torch.Tensor:
        gen = step_generator(cfg.seed, step)
        idx = torch.randperm(len(combos), generator=gen)[:cfg.batch_size]  # [B]
        shuffled = torch.rand(len(idx), generator=gen) < cfg.shuffle_prob  # [B]
        order = torch.where(shuffled, torch.randint(1, len(orders), (len(idx),), generator=gen), 0)  # [B]
        rows = combos[idx] * len(orders) + order  # [B] rows of `prompts`
        shifts = torch.randint(0, max(1, cfg.max_shift_frames), (len(idx),), generator=gen).tolist()
        feats = torch.stack([torch.roll(x[i], s, dims=1) for i, s in zip(idx.tolist(), shifts)])  # [B, 1, F, M]
        out = model(input_ids=ids["input_ids"][rows], attention_mask=ids["attention_mask"][rows],
                    input_features=feats)
        same = (combos[idx, None] == combos[None, idx]).float()  # [B, B] positives: the same tags
        target = same / same.sum(1, keepdim=True)
        text_to_audio = -(target * out.logits_per_text.log_softmax(-1)).sum(-1).mean()
        audio_to_text = -(target * out.logits_per_audio.log_softmax(-1)).sum(-1).mean()
        return 0.5 * (text_to_audio + audio_to_text)

    run = fit_resumable(NAME, model, asdict(cfg), out_dir, loss_fn, log, steps=cfg.steps, lr=cfg.lr,
                        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                        checkpoint_every=cfg.checkpoint_every)
    metrics = {f"heldout_{k}": v for k, v in retrieval_metrics(model, tokenizer, xh, combos_h).items()}
    sub = slice(0, len(held_clips))
    train_metrics = retrieval_metrics(model, tokenizer, x[sub], combos[sub])
    metrics.update({"train_audio_to_text_top1": train_metrics["audio_to_text_top1"], "heldout_clips": len(held_clips),
                    "logit_scale_text": round(model.logit_scale_t.detach().exp().item(), 3),
                    "logit_scale_audio": round(model.logit_scale_a.detach().exp().item(), 3),
                    "steps_per_s": run["steps_per_s"], "data_seconds": round(data_seconds, 1),
                    "train_seconds_this_run": run["seconds"], "resumed_from": run["resumed_from"]})
    log(f"[{NAME}] held-out text->audio top-1 {metrics['heldout_text_to_audio_top1']} (chance "
        f"{metrics['heldout_text_to_audio_chance']}), audio->text top-1 {metrics['heldout_audio_to_text_top1']}")
    card = {"name": NAME, "kind": "ClapModel + ClapProcessor (the text control's CLAP: a verifier search uses)",
            "parameters": n_params(model), "parameters_audio": n_params(model.audio_model),
            "parameters_text": n_params(model.text_model), "vocabulary": len(tokenizer),
            "data": f"ponder.modalities.music.tones clips ({extractor.sampling_rate} Hz, {train_clips[0].seconds:g} s) "
                    f"and their tags, the first {len(train_seeds)} train-split seeds of the 'teacher' half "
                    f"(train_judge.half_of: sha256 of 'tones-half-SEED', even), seeds {train_seeds[0]}.."
                    f"{train_seeds[-1]}; metrics on the first {len(held_clips)} held-out seeds (tones.split_of)",
            "seed": cfg.seed, "recipe": asdict(cfg), "metrics": metrics, "history": run["history"],
            "reproduce": f"ponder zoo train {NAME}"}
    card = json.loads(json.dumps(card))  # what the file holds (tuples as lists) is what train returns

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(tmp)
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    save_zoo_folder(out_dir, write)
    return card
