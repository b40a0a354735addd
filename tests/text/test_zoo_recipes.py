"""Zoo recipes end to end in smoke mode (tiny shapes, two steps), and the shipped zoo itself."""

import json

import pytest

from ponder import zoo
from ponder.errors import ZooError


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    cards = {name: zoo.train(name, log=lambda line: None, out_dir=out, smoke=True)
             for name in ("arith", "arith-draft", "prm", "orm")}
    return out, cards


def test_smoke_recipes_write_real_formats_with_cards(smoke_zoo):
    out, cards = smoke_zoo
    for name in cards:
        folder = out / name
        assert (folder / "model.safetensors").is_file()
        assert (folder / "tokenizer.json").is_file()
        assert json.loads((folder / "card.json").read_text())["reproduce"] == f"ponder zoo train {name}"
        assert not (folder / "checkpoint").exists(), "the checkpoint is removed once the weights are saved"
    assert 0.0 <= cards["arith"]["metrics"]["heldout_greedy_acc"] <= 1.0
    assert 0.0 <= cards["arith-draft"]["metrics"]["greedy_agreement_with_target"] <= 1.0
    assert 0.0 <= cards["prm"]["metrics"]["heldout_balanced_step_acc"] <= 1.0
    for name in ("orm", "prm"):
        assert 0.0 <= cards[name]["metrics"]["heldout_best_of_n_acc"] <= 1.0
        assert cards[name]["metrics"]["samples_per_problem"] == 8


def test_smoke_models_load_through_the_user_path(smoke_zoo):
    import ponder

    out, _ = smoke_zoo
    lm = ponder.load("text", out / "arith")
    res = ponder.generate(lm, "Q: 1+2*3\n", n=2, verifier=ponder.load_verifier("text", out / "prm"),
                          max_new_tokens=6, seed=1)
    assert len(res.candidates) == 2 and all(c.score is not None for c in res.candidates)
    orm = ponder.load_verifier("text", out / "orm")
    scores = orm.score("Q: 1+2\n", ["1+2=3\nA: 3\n", "1+2=4\nA: 4\n"])
    assert scores.shape == (2,) and bool(((scores >= 0) & (scores <= 1)).all())


def test_training_resumes_from_its_checkpoint(tmp_path):
    """A recipe killed after a checkpoint picks up at that step instead of starting over."""
    import torch
    from transformers import LlamaForSequenceClassification

    from ponder.modalities.text import train as recipes

    base = {**recipes.asdict(recipes.RECIPES["arith-draft"]), **recipes.SMOKE_SHAPE, "eval_every": 1}
    tok = recipes.arith.build_tokenizer()
    model = LlamaForSequenceClassification(recipes.llama_config(recipes.RecipeConfig(**base), tok, num_labels=1))
    steps_run, logs = [], []

    def loss_fn(step):
        steps_run.append(step)
        return model(input_ids=torch.tensor([[1, 5, 6]])).logits.pow(2).sum(), 3

    recipes._train_loop(model, recipes.RecipeConfig(**{**base, "steps": 1}), tmp_path, loss_fn, None, logs.append)
    assert (tmp_path / "checkpoint" / "state.pt").is_file()
    recipes._train_loop(model, recipes.RecipeConfig(**{**base, "steps": 3}), tmp_path, loss_fn, None, logs.append)
    assert steps_run == [0, 1, 2]
    assert any("resumed at step 1" in line for line in logs)


def test_unknown_zoo_names_are_rejected_with_the_list():
    with pytest.raises(ZooError, match="arith"):
        zoo.entry("zoo:nope")
    with pytest.raises(ZooError):
        zoo.train("exact")


def test_the_shipped_text_zoo_is_built_and_carded():
    for name in ("arith", "arith-draft", "orm", "prm"):
        entry = zoo.entry(name)
        assert entry.built, f"zoo:{name} weights missing at {entry.folder}"
        card = entry.card()
        assert card["metrics"] and card["recipe"]["steps"] > 0
