"""The tones-judge and tones-clap zoo recipes: smoke runs into a temp zoo load through the user paths
(`TonesJudge.from_folder`, `controls.load_clap` / `TextAdherence`), the Fréchet distance against closed
forms, the halves rule keeping the judge's clips apart from the teacher's and the held-out ones, and
resuming from a checkpoint. The full recipes (marked slow) reproduce their committed cards."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ponder.errors import InputError, ZooError
from ponder.modalities.music import tones, train_clap, train_judge
from ponder.modalities.music.controls import TextAdherence, load_clap, parse_control
from ponder.modalities.music.train_judge import (
    TonesJudge,
    fit_resumable,
    frechet_distance,
    half_of,
    half_seeds,
    save_zoo_folder,
    step_generator,
)
from ponder.search.core import Audio

ZOO_DIR = Path(train_judge.__file__).parent / "zoo"  # where the lead ships the music zoo
RECIPES = {"tones-judge": train_judge, "tones-clap": train_clap}


def smoke(name: str, zoo_dir: Path, steps: int | None = None) -> tuple[dict, list[str], list[int]]:
    """Run a smoke recipe; returns (card, log lines, every seed it generated a clip of)."""
    lines: list[str] = []
    generated: list[int] = []
    real_generate = tones.generate

    def spy(seed, cfg=None):
        generated.append(seed)
        return real_generate(seed, cfg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tones, "generate", spy)  # `tones.clips` and both recipes call it through the module
        card = RECIPES[name].train(name, zoo_dir, log=lines.append, steps=steps, smoke=True)
    return card, lines, generated


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory):
    zoo = tmp_path_factory.mktemp("zoo")
    return (zoo, *smoke("tones-judge", zoo))


@pytest.fixture(scope="module")
def clap_run(tmp_path_factory):
    zoo = tmp_path_factory.mktemp("zoo")
    return (zoo, *smoke("tones-clap", zoo))


def heldout_waves(n: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([c.waveform for c in tones.clips("heldout", n)]))  # [n, 64000]


# ---- the judge ---------------------------------------------------------------------------------------------------


def test_judge_smoke_folder_has_weights_extractor_and_card(judge_run):
    zoo, card, lines, _ = judge_run
    folder = zoo / "tones-judge"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "card.json"} <= {
        p.name for p in folder.iterdir()}
    assert json.loads((folder / "card.json").read_text()) == card
    assert card["reproduce"] == "ponder zoo train tones-judge" and card["seed"] == train_judge.JudgeRecipe().seed
    assert card["recipe"]["steps"] == 2 and [h["step"] for h in card["history"]] == [1, 2]
    assert card["kind"].startswith("ASTForAudioClassification") and card["parameters"] > 0
    assert (folder / "checkpoint" / "state.pt").is_file()
    assert not list(zoo.glob("*.saving"))  # the temp folders of the atomic write are gone
    assert any("held-out accuracy" in line for line in lines)


def test_judge_loads_and_gives_grouped_tag_probs_and_embeddings(judge_run):
    zoo, card, _, _ = judge_run
    judge = TonesJudge.from_folder(zoo / "tones-judge")
    assert type(judge.model).__name__ == "ASTForAudioClassification"
    assert judge.groups == {"timbre": tones.TIMBRES, "register": tones.REGISTERS, "tempo": tones.TEMPO_WORDS}
    waves = heldout_waves(3)
    probs = judge.tag_probs(waves)
    assert list(probs) == ["timbre", "register", "tempo"]
    assert {g: tuple(p.shape) for g, p in probs.items()} == {"timbre": (3, 4), "register": (3, 3), "tempo": (3, 3)}
    for p in probs.values():
        torch.testing.assert_close(p.sum(-1), torch.ones(3))
        assert (p >= 0).all()
    emb = judge.embed(waves)
    assert emb.shape == (3, train_judge.SMOKE["hidden_size"]) == (3, card["metrics"]["embedding_dim"])
    # the embedding is what the head reads: head(embedding) gives the same probabilities
    head = judge.model.classifier(emb)
    torch.testing.assert_close(head[:, :4].softmax(-1), probs["timbre"])
    tags = judge.predict_tags(waves)
    assert len(tags) == 3
    for text in tags:
        timbre, register, tempo = text.split(", ")
        assert timbre in tones.TIMBRES and register in tones.REGISTERS and tempo in tones.TEMPO_WORDS


def test_judge_takes_audio_outputs_at_another_rate(judge_run):
    import torchaudio

    judge = TonesJudge.from_folder(judge_run[0] / "tones-judge")
    waves = heldout_waves(2)
    at_8k = torchaudio.functional.resample(waves, 16000, 8000)  # [2, 32000]
    from_audio = judge.embed([Audio(w, 8000) for w in at_8k])
    from_tensor = judge.embed(at_8k, sample_rate=8000)
    torch.testing.assert_close(from_audio, from_tensor)
    assert from_audio.shape == judge.embed(waves).shape
    with pytest.raises(InputError, match="shaped"):
        judge.embed(torch.zeros(5))  # one clip must still be [1, T]


def test_judge_rejects_a_folder_without_a_model(tmp_path):
    from ponder.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="no config.json"):
        TonesJudge.from_folder(tmp_path)


# ---- the Fréchet distance ------------------------------------------------------------------------------------------


def test_frechet_distance_1d_matches_the_closed_form():
    # N(1, 2) vs N(5, 4) (unbiased variances): (1 - 5)^2 + (sqrt 2 - 2)^2 = 22 - 4 sqrt 2
    a, b = torch.tensor([[0.0], [2.0]]), torch.tensor([[3.0], [5.0], [7.0]])
    assert frechet_distance(a, b) == pytest.approx(22 - 4 * math.sqrt(2), abs=1e-9)


def test_frechet_distance_diagonal_case_matches_the_closed_form():
    corners = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.float64)  # cov diag(4/3, 4/3)
    other = corners * [2.0, 3.0] + [1.0, 0.0]  # mean (1, 0), cov diag(16/3, 12)
    # ||(1, 0)||^2 + sum_i (sigma_a,i - sigma_b,i)^2 = 1 + (2 - 4)^2 / 3 + (2 - 6)^2 / 3
    expected = 1 + 4 / 3 + 16 / 3
    assert frechet_distance(corners, other) == pytest.approx(expected, abs=1e-9)
    assert frechet_distance(other, corners) == pytest.approx(expected, abs=1e-9)


def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_moved_one():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.0, 0.0, 0.25, 0.0])
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    assert TonesJudge.frechet_distance(x, x * 2) > 0.5  # wider: the covariance term alone


def test_frechet_distance_names_bad_inputs():
    with pytest.raises(InputError, match="one width"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(InputError, match="N >= 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3))
    with pytest.raises(InputError, match="non-finite"):
        frechet_distance(torch.tensor([[0.0], [float("nan")]]), torch.zeros(4, 1))


# ---- the halves rule -------------------------------------------------------------------------------------------


def test_halves_are_disjoint_train_seeds_fixed_by_the_hash():
    judge, teacher = half_seeds("judge", 400), half_seeds("teacher", 400)
    assert not set(judge) & set(teacher)
    assert all(tones.split_of(s) == "train" for s in judge + teacher)
    assert judge[:8] == [2, 8, 12, 15, 16, 20, 22, 24] and teacher[:8] == [0, 1, 3, 5, 6, 7, 9, 11]  # pinned
    train_seeds = tones.seeds("train", 1000)
    share = sum(half_of(s) == "judge" for s in train_seeds) / len(train_seeds)
    assert 0.45 < share < 0.55
    held = tones.seeds("heldout", 1)[0]
    with pytest.raises(InputError, match=f"seed {held} is a held-out"):
        half_of(held)


def test_judge_trains_only_on_judge_half_seeds_and_clap_only_on_teacher_half(judge_run, clap_run):
    for (_, card, _, generated), own, other in ((judge_run, "judge", "teacher"), (clap_run, "teacher", "judge")):
        train_seeds = [s for s in generated if tones.split_of(s) == "train"]
        held = [s for s in generated if tones.split_of(s) == "heldout"]
        assert train_seeds == half_seeds(own, card["recipe"]["train_clips"])  # exactly its half's first seeds
        assert not {half_of(s) for s in train_seeds} & {other}
        assert held == tones.seeds("heldout", card["recipe"]["heldout_clips"])  # evaluation only


# ---- the CLAP ----------------------------------------------------------------------------------------------------


def test_clap_smoke_folder_loads_through_load_clap_and_scores_with_text_adherence(clap_run):
    zoo, card, _, _ = clap_run
    folder = zoo / "tones-clap"
    assert card["reproduce"] == "ponder zoo train tones-clap" and card["recipe"]["steps"] == 2
    assert json.loads((folder / "card.json").read_text()) == card
    model, processor = load_clap(folder)
    assert type(model).__name__ == "ClapModel" and type(processor).__name__ == "ClapProcessor"
    assert processor.feature_extractor.sampling_rate == 16000
    for word in tones.TAG_VOCAB:  # every tag word is one token, first or after a comma
        assert len(processor.tokenizer.tokenize(word)) == 1
        assert len(processor.tokenizer.tokenize(f"pluck, {word}")) == 3
    assert processor.tokenizer.tokenize("zz") == ["z", "z"]  # other text falls back to bytes
    control = TextAdherence(folder, sample_rate=16000, text="pluck, high, fast")  # through load_clap
    waves = heldout_waves(2)
    score = control.score(None, [Audio(w, 16000) for w in waves])
    assert score.shape == (2,) and torch.isfinite(score).all() and (score.abs() <= 1.0 + 1e-5).all()
    torch.testing.assert_close(control.score_tensor(None, waves), score, atol=2e-4, rtol=0)
    other = parse_control("text=square, low, slow", 16000, clap=folder)
    assert not torch.allclose(other.score(None, [Audio(w, 16000) for w in waves]), score)


def test_clap_retrieval_metrics_count_hits_among_the_combinations(clap_run):
    zoo, _, _, _ = clap_run
    model, processor = load_clap(zoo / "tones-clap")
    clips = list(tones.clips("heldout", 4))
    extractor = processor.feature_extractor
    feats = extractor([c.waveform.astype(np.float64) for c in clips], sampling_rate=16000,
                      return_tensors="pt")["input_features"]
    combos = torch.tensor([train_clap.combo_index(c) for c in clips])
    metrics = train_clap.retrieval_metrics(model, processor.tokenizer, feats, combos)
    # recompute audio -> text by hand from the normalised embeddings
    texts = [", ".join(c) for c in train_clap.COMBOS]
    sim = train_clap.embed_audio(model, feats) @ train_clap.embed_texts(model, processor.tokenizer, texts).T
    assert metrics["audio_to_text_top1"] == pytest.approx(float((sim.argmax(1) == combos).float().mean()), abs=1e-4)
    assert metrics["audio_to_text_chance"] == pytest.approx(1 / 36, abs=1e-4)
    assert 0.0 <= metrics["text_to_audio_top1"] <= 1.0


# ---- resuming, the loop and the atomic write ---------------------------------------------------------------------


def _tiny_fit(out_dir: Path, steps: int, recipe: dict, lines: list[str]) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    target = torch.tensor([[1.0], [-2.0], [0.5]])

    def loss_fn(step: int) -> torch.Tensor:
        x = torch.randn(8, 3, generator=step_generator(0, step))  # [8, 3]
        return ((model(x) - x @ target) ** 2).mean()

    run = fit_resumable("tiny", model, {**recipe, "steps": steps}, out_dir, loss_fn, lines.append, steps=steps,
                        lr=0.05, warmup_steps=2, weight_decay=0.0, checkpoint_every=2)
    return model, run


def test_fit_resumes_a_checkpoint_into_the_same_run_and_refuses_other_recipes(tmp_path):
    lines: list[str] = []
    fresh, _ = _tiny_fit(tmp_path / "fresh", 6, {"lr": 0.05}, lines)
    _, first = _tiny_fit(tmp_path / "resumed", 3, {"lr": 0.05}, lines)
    assert first["resumed_from"] == 0
    resumed, run = _tiny_fit(tmp_path / "resumed", 6, {"lr": 0.05}, lines)
    assert run["resumed_from"] == 3 and "[tiny] resumed at step 3" in lines
    assert [h["step"] for h in run["history"]] == [2, 3, 4, 6]
    for a, b in zip(fresh.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same run, step for step
    _, other = _tiny_fit(tmp_path / "resumed", 6, {"lr": 0.1}, lines)
    assert other["resumed_from"] == 0 and any("another recipe (lr differ)" in line for line in lines)
    _, behind = _tiny_fit(tmp_path / "resumed", 4, {"lr": 0.1}, lines)
    assert behind["resumed_from"] == 0 and any("at step 6, past 4" in line for line in lines)


@pytest.mark.parametrize("name", ["tones-judge", "tones-clap"])
def test_recipe_resumes_from_its_checkpoint_and_matches_a_fresh_run(name, judge_run, clap_run, tmp_path):
    shutil.copytree((judge_run if name == "tones-judge" else clap_run)[0], tmp_path / "resumed")  # at step 2
    card, lines, _ = smoke(name, tmp_path / "resumed", steps=4)
    assert f"[{name}] resumed at step 2" in lines
    assert card["metrics"]["resumed_from"] == 2 and [h["step"] for h in card["history"]] == [1, 2, 3, 4]
    fresh_card, fresh_lines, _ = smoke(name, tmp_path / "fresh", steps=4)
    assert fresh_card["metrics"]["resumed_from"] == 0 and not any("resumed" in line for line in fresh_lines)
    resumed_w = load_file(tmp_path / "resumed" / name / "model.safetensors")
    fresh_w = load_file(tmp_path / "fresh" / name / "model.safetensors")
    assert resumed_w.keys() == fresh_w.keys()
    for key in fresh_w:
        torch.testing.assert_close(resumed_w[key], fresh_w[key], rtol=0, atol=1e-6)


def test_save_zoo_folder_swaps_atomically_keeps_the_checkpoint_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "model"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "state.pt").write_text("state")
    (out / "old.json").write_text("old")
    save_zoo_folder(out, lambda tmp: (tmp / "new.json").write_text("new"))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "new.json"]
    assert (out / "checkpoint" / "state.pt").read_text() == "state"

    def broken(tmp: Path) -> None:
        (tmp / "half.json").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_zoo_folder(out, broken)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "new.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("name", ["tones-judge", "tones-clap"])
def test_recipe_refuses_another_name(name, tmp_path):
    with pytest.raises(ZooError, match="'digits'"):
        RECIPES[name].train("digits", tmp_path, smoke=True)


# ---- the full recipes reproduce their cards (minutes each) -------------------------------------------------------


TIMING = {"steps_per_s", "data_seconds", "train_seconds_this_run"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tones-judge", "tones-clap"])
def test_full_recipe_reproduces_its_card(name, tmp_path):
    shipped = ZOO_DIR / name / "card.json"
    if not shipped.is_file():
        pytest.fail(f"{name} is not built into {ZOO_DIR} yet: build it with `ponder zoo train {name}`")
    expected = json.loads(shipped.read_text())
    card = RECIPES[name].train(name, tmp_path, log=lambda line: None)
    assert card["recipe"] == expected["recipe"] and card["parameters"] == expected["parameters"]
    assert card["data"] == expected["data"]
    for key, value in expected["metrics"].items():
        if key not in TIMING | {"resumed_from"}:
            assert card["metrics"][key] == pytest.approx(value, abs=0.02, rel=0.05), key
