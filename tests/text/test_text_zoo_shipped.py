"""The shipped text zoo meets its cards: each figure is measured again here, on the same held-out
problems and seeds the recipe used, from the weights a user loads."""

import json

import pytest
import torch

from ponder import zoo
from ponder.modalities.text import arith, train, train_verifiers

TOL = 0.011  # a rate over hundreds of items: one item of slack for float drift across machines


def _card(name):
    return json.loads((zoo.entry(name).folder / "card.json").read_text())


@pytest.fixture(scope="module")
def target():
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return train._load_target(zoo.entry("arith").folder)


def test_target_greedy_accuracy_matches_its_card(target):
    model, tok = target
    card = _card("arith")
    acfg = arith.ArithConfig(**card["recipe"]["arith"])
    probs = arith.problems("heldout", card["metrics"]["eval_problems"], seed=card["recipe"]["seed"] + 1,
                           template="Q", cfg=acfg)
    prompts = [p.prompt for p in probs]
    acc = train.accuracy(prompts, train.greedy_completions(model, tok, prompts))
    assert acc == pytest.approx(card["metrics"]["heldout_greedy_acc"], abs=TOL)


def test_draft_agreement_matches_its_card(target):
    from transformers import LlamaForCausalLM

    model, tok = target
    card = _card("arith-draft")
    draft = LlamaForCausalLM.from_pretrained(zoo.entry("arith-draft").folder, local_files_only=True,
                                             dtype=torch.float32).eval()
    acfg = arith.ArithConfig(**card["recipe"]["arith"])
    agree = train.draft_agreement(draft, model, tok, acfg, card["recipe"]["seed"], 200)
    assert agree == pytest.approx(card["metrics"]["greedy_agreement_with_target"], abs=TOL)


@pytest.fixture(scope="module")
def heldout_pool(target):
    model, tok = target
    card = _card("prm")
    probs = arith.problems("heldout", card["metrics"]["heldout_problems"], seed=card["recipe"]["seed"] + 5,
                           template="Q", cfg=arith.ArithConfig(**card["recipe"]["arith"]))
    with torch.no_grad():
        return train_verifiers.sample_pool(model, tok, probs, (train_verifiers.EVAL_TEMPERATURE,),
                                           train_verifiers.EVAL_SAMPLES, card["recipe"]["seed"] + 1, lambda m: None)


@pytest.mark.parametrize("name", ["prm", "orm"])
def test_verifiers_meet_their_cards_on_the_targets_heldout_samples(heldout_pool, name):
    import ponder

    card = _card(name)
    verifier = ponder.load_verifier("text", name)
    metrics = train_verifiers.heldout_metrics(verifier, heldout_pool, process=(name == "prm"))
    for key in ("heldout_best_of_n_acc", "heldout_random_sample_acc", "heldout_balanced_step_acc"):
        if key in card["metrics"]:
            assert metrics[key] == pytest.approx(card["metrics"][key], abs=TOL), key
