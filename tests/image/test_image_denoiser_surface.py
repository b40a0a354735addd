"""The image surface over a Denoiser: verifiers (classifier, CLIP, aesthetic, ensembles), generate()
with sample / best-of-N (NFEs, verifier calls, seeds that re-render), pixel diversity, and clear errors."""

from __future__ import annotations

import io

import image_tiny
import numpy as np
import pytest
import torch
from PIL import Image

import ponder
from ponder.errors import ConfigError, InputError
from ponder.modalities.image.diversity import pixel_diversity
from ponder.search.verifiers.ensemble import ranks


def grey(values) -> Image.Image:
    return Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L")


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    return image_tiny.class_unet_folder(tmp_path_factory.mktemp("unet"))


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=3,
                       id2label={i: lab for i, lab in enumerate(image_tiny.LABELS)},
                       label2id={lab: i for i, lab in enumerate(image_tiny.LABELS)})
    folder = tmp_path_factory.mktemp("vit") / "classifier"
    ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(0)
    text = image_tiny._clip_text_config()
    vision = CLIPVisionConfig(image_size=8, patch_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, projection_dim=16)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    folder = tmp_path_factory.mktemp("clip") / "clip"
    model.save_pretrained(folder, safe_serialization=True)
    image_proc = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    CLIPProcessor(image_processor=image_proc, tokenizer=image_tiny.tiny_clip_tokenizer()).save_pretrained(folder)
    return folder


def test_classifier_verifier_scores_the_prompted_class_probability(classifier_folder):
    verifier = ponder.load_verifier("image", classifier_folder)
    images = [grey(np.random.default_rng(i).integers(0, 255, (8, 8))) for i in range(3)]
    per_class = torch.stack([verifier.score(label, images) for label in image_tiny.LABELS])  # [K, N]
    assert torch.allclose(per_class.sum(0), torch.ones(3), atol=1e-5)  # probabilities of all classes
    logits = verifier.logits(images)
    assert torch.allclose(per_class.T, logits.softmax(-1), atol=1e-6)
    assert torch.allclose(verifier.score("1", images), per_class[1])  # an index names the same class
    with pytest.raises(InputError, match="classes: zero, one, two"):
        verifier.score("nine", images)
    with pytest.raises(InputError, match="scores images, got a str"):
        verifier.score("one", ["not an image"])


def test_clip_verifier_is_clip_cosine_similarity(clip_folder):
    from transformers import CLIPModel, CLIPProcessor

    verifier = ponder.load_verifier("image", clip_folder)
    assert verifier.name == "clip"
    images = [grey(np.full((8, 8), v)) for v in (0, 128, 255)]
    scores = verifier.score("the cat", images)
    model = CLIPModel.from_pretrained(clip_folder)
    proc = CLIPProcessor.from_pretrained(clip_folder)
    out = model(**proc(text=["the cat"], images=[im.convert("RGB") for im in images], return_tensors="pt",
                       padding=True))
    assert torch.allclose(scores, out.logits_per_image[:, 0] / model.logit_scale.exp(), atol=1e-5)
    assert not torch.allclose(scores, verifier.score("a 7", images))  # the prompt matters


def test_aesthetic_is_contrast_plus_mean_gradient():
    verifier = ponder.load_verifier("image", "aesthetic")
    checker = np.indices((4, 4)).sum(0) % 2 * 255  # black/white checkerboard
    scores = verifier.score(None, [grey(np.full((4, 4), 90)), grey(checker)])
    # flat: no contrast, no edges; checkerboard: std 0.5 + (1 + 1) / 2
    assert torch.allclose(scores, torch.tensor([0.0, 1.5]))


def test_comma_list_is_a_rank_ensemble_and_text_verifiers_are_refused(classifier_folder):
    verifier = ponder.load_verifier("image", f"{classifier_folder},aesthetic")
    images = [grey(np.random.default_rng(i).integers(0, 255, (8, 8))) for i in range(4)]
    want = (ranks(ponder.load_verifier("image", classifier_folder).score("two", images))
            + ranks(ponder.load_verifier("image", "aesthetic").score("two", images))) / 2
    assert torch.allclose(verifier.score("two", images), want)
    for bad, match in [("orm", "scores text, not images"), ("exact", "scores text"), ("nope", "unknown image verifier"),
                       ("clip", "needs CLIP weights")]:
        with pytest.raises(ConfigError, match=match):
            ponder.load_verifier("image", bad)


def test_best_of_n_on_a_denoiser_counts_nfe_and_rerenders_from_the_seed(unet_folder):
    model = ponder.load("image", unet_folder)
    result = ponder.generate(model, "two", strategy="best-of-n", n=3, verifier="aesthetic", steps=3, seed=5)
    assert result.compute.nfe == 3 * 3 and result.compute.verifier_calls == 3 and result.compute.tokens == 0
    scores = [c.score for c in result.candidates]
    assert result.best.score == max(scores) and len(set(scores)) == 3
    assert pixel_diversity([c.output for c in result.candidates]) > 0  # three different images
    assert result.config["steps"] == 3 and result.config["modality"] == "image"
    # candidate 2 alone, from its recorded seed: same bytes
    cand = result.candidates[2]
    fresh = ponder.load("image", unet_folder)
    x = fresh.noise([torch.Generator().manual_seed(cand.seed)])
    again = fresh.decode(fresh.sample(x, fresh.condition("two", 1), 3))[0]
    assert again.tobytes() == cand.output.tobytes()


def test_sample_on_a_denoiser_ignores_text_only_options(unet_folder):
    model = ponder.load("image", unet_folder)
    seen = []
    result = ponder.generate(model, "one", n=2, steps=2, stop=["x"], stream=lambda row, text: seen.append(text))
    assert [c.meta["index"] for c in result.candidates] == [0, 1] and result.best is result.candidates[0]
    assert all(isinstance(c.output, Image.Image) for c in result.candidates) and seen == []
    assert result.compute.nfe == 2 * 2
    default = ponder.generate(model, "one", n=1)  # the model's default steps
    assert default.compute.nfe == model.default_steps


def test_denoiser_refuses_token_strategies_decoders_and_bad_steps(unet_folder):
    model = ponder.load("image", unet_folder)
    for kwargs, match in [({"strategy": "beam"}, "does not run on a diffusion model"),
                          ({"decoder": "speculative"}, "decodes tokens"),
                          ({"steps": 0}, "positive integer"),
                          ({"steps": 2.5}, "positive integer"),
                          ({"calibrate": 4, "verifier": "aesthetic"}, "not available for diffusion")]:
        with pytest.raises(ConfigError, match=match):
            ponder.generate(model, "one", n=1, **kwargs)
    with pytest.raises(InputError, match="not a class"):
        ponder.generate(model, "seven", n=1, steps=1)


def test_pixel_diversity_is_the_mean_pairwise_rms_pixel_distance():
    black, white = grey(np.zeros((2, 2))), grey(np.full((2, 2), 255))
    assert pixel_diversity([black]) is None
    assert pixel_diversity([black, black]) == 0.0
    assert pixel_diversity([black, white, white]) == pytest.approx((1 + 1 + 0) / 3)
    png = io.BytesIO()
    white.save(png, format="PNG")
    assert pixel_diversity([Image.open(png), black]) == pytest.approx(1.0)
    half = grey([[0, 255], [0, 0]])  # one pixel of four differs from black: RMS sqrt(1 / 4)
    assert pixel_diversity([half, black]) == pytest.approx(0.5)
    rgb = Image.fromarray(np.stack([np.zeros((2, 2)), np.full((2, 2), 255), np.zeros((2, 2))], -1).astype(np.uint8))
    assert pixel_diversity([rgb, Image.new("RGB", (2, 2))]) == pytest.approx(3 ** -0.5)  # one channel of three


def test_classifier_name_loads_the_zoo_digits_classifier():
    verifier = ponder.load_verifier("image", "classifier")
    assert verifier.name == "classifier" and verifier.labels == [str(d) for d in range(10)]
    image = grey(np.random.default_rng(0).integers(0, 255, (16, 16)))
    total = sum(float(verifier.score(str(d), [image])[0]) for d in range(10))
    assert total == pytest.approx(1.0, abs=1e-5)
    ensemble = ponder.load_verifier("image", "ensemble")  # classifier + aesthetic, rank-averaged
    assert [v.name for v in ensemble.verifiers] == ["classifier", "aesthetic"] and ensemble.method == "rank"
