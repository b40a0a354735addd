"""The digits zoo: data split, recipes (smoke end to end through the user load path), shipped cards."""

from __future__ import annotations

import json

import pytest
import torch

import ponder
from ponder import zoo
from ponder.errors import ConfigError, InputError, ZooError
from ponder.modalities.image import digits
from ponder.modalities.image import train as recipes


def test_digits_splits_are_disjoint_and_cover_the_data():
    (xa, _), (xb, _), (xh, yh), (xt, _) = (digits.load(s) for s in ("train-a", "train-b", "heldout", "train"))
    assert xa.shape[1:] == (1, digits.SIZE, digits.SIZE) and xa.min() >= -1 and xa.max() <= 1
    assert len(xa) + len(xb) == len(xt) and len(xt) + len(xh) == 1797
    rows = {tuple(r.flatten().tolist()) for r in xh}
    assert not any(tuple(r.flatten().tolist()) in rows for r in xa[:200])  # held-out images never trained on
    assert set(yh.tolist()) == set(range(10))
    assert torch.equal(digits.load("heldout")[1], yh)  # fixed split
    with pytest.raises(ConfigError, match="unknown digits split"):
        digits.load("test")


def test_smoke_recipes_write_folders_the_user_path_loads(tmp_path):
    for name in ("digits-judge", "digits-classifier", "digits"):
        card = zoo.train(name, out_dir=tmp_path, smoke=True, log=lambda *a: None)
        assert card["name"] == name and card["recipe"]["steps"] == recipes.SMOKE["steps"]
        assert json.loads((tmp_path / name / "card.json").read_text())["name"] == name
    assert not list(tmp_path.glob("*.tmp"))  # folders moved into place whole
    model = ponder.load("image", tmp_path / "digits")
    assert model.labels == digits.CLASS_NAMES
    res = ponder.generate(model, "7", strategy="noise-random", n=2, seed=0, steps=2,
                          verifier=ponder.load_verifier("image", str(tmp_path / "digits-classifier")))
    assert res.best.output.size == (16, 16) and res.compute.nfe == 4
    with pytest.raises(InputError, match="not a class"):
        model.condition("eleven", 1)
    judge_card = json.loads((tmp_path / "digits" / "card.json").read_text())
    assert "judge_accuracy_plain" in judge_card["metrics"]  # the judge was built first, so it labels samples


def test_unknown_image_recipe_is_a_zoo_error(tmp_path):
    with pytest.raises(ZooError, match="no image recipe"):
        recipes.train("digits-ar-nope", tmp_path)


@pytest.mark.parametrize("name", ["digits-classifier", "digits-judge"])
def test_shipped_classifiers_are_accurate_on_held_out_digits(name):
    card = zoo.entry(name).card()
    assert card["metrics"]["heldout_accuracy"] >= 0.93
    model, _ = recipes.load_classifier(zoo.folder(name))
    x, y = digits.load("heldout")
    assert recipes.classifier_accuracy(model, x[:120], y[:120]) >= 0.9


def test_judge_and_verifier_are_independent():
    verifier, judge = zoo.entry("digits-classifier").card(), zoo.entry("digits-judge").card()
    assert verifier["recipe"]["split"] == "train-a" and judge["recipe"]["split"] == "train-b"
    assert verifier["kind"].split()[0] != judge["kind"].split()[0]  # different architectures


def test_shipped_digits_model_samples_the_prompted_class():
    assert zoo.entry("digits").built, "zoo:digits ships with the repo; rebuild it with `ponder zoo train digits`"
    card = zoo.entry("digits").card()
    assert card["metrics"]["judge_accuracy_plain"] >= 0.5
    model = ponder.load("image", "zoo:digits")
    res = ponder.generate(model, "0", strategy="sample", n=4, seed=0, steps=8)
    judge, _ = recipes.load_classifier(zoo.folder("digits-judge"))
    x = torch.stack([torch.tensor(list(im.getdata()), dtype=torch.float32).view(1, 16, 16) / 127.5 - 1
                     for im in (c.output for c in res.candidates)])
    assert recipes.classifier_accuracy(judge, x, torch.zeros(4, dtype=torch.long)) >= 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits-judge", "digits-classifier", "digits"])
def test_full_recipe_reproduces_the_shipped_card(tmp_path, name):
    if name == "digits":  # its card metric needs the judge next to it
        zoo.train("digits-judge", out_dir=tmp_path, log=lambda *a: None)
    card = zoo.train(name, out_dir=tmp_path, log=lambda *a: None)
    shipped = zoo.entry(name).card()
    assert json.loads(json.dumps(card["recipe"])) == shipped["recipe"]
    for key, value in shipped["metrics"].items():
        if key.endswith("accuracy") or key.endswith("accuracy_plain"):
            assert card["metrics"][key] == pytest.approx(value, abs=0.03)
