"""The zoo:facts recipe end to end on a smoke shape: batches are a pure function of (seed, step),
never hold a held-out entity, and the card carries the figures the bench will read."""

from __future__ import annotations

from ponder import zoo
from ponder.modalities.text import arith, facts
from ponder.modalities.text.train_facts import RECIPES, Examples, batch


def test_batches_are_reproducible_and_hold_no_held_out_entity():
    world = facts.World.generate(0)
    examples, tokenizer, cfg = Examples(world), arith.build_tokenizer(), RECIPES["facts"]
    first = batch(examples, tokenizer, cfg, 7)
    assert first.equal(batch(examples, tokenizer, cfg, 7)) and not first.equal(batch(examples, tokenizer, cfg, 8))
    assert first.shape == (cfg.batch_size, cfg.short_context)
    long = batch(examples, tokenizer, cfg, cfg.steps - 1)
    assert long.shape[1] == cfg.long_context and long.numel() == first.numel()
    text = " ".join(tokenizer.decode(row) for row in [*first, *long])
    held = [n for n in world.entities() if facts.held_out(n) and n in world.people]
    assert held and not any(name in text for name in held)


def test_the_smoke_recipe_trains_saves_and_writes_its_card(tmp_path):
    card = zoo.train("facts", log=lambda *_: None, out_dir=tmp_path, smoke=True)
    for key in ("closed_book_accuracy_known", "reading_accuracy_unseen", "conflict_faithfulness",
                "conflict_memorised_answer"):
        assert 0.0 <= card["metrics"][key] <= 1.0
    assert (tmp_path / "facts" / "model.safetensors").is_file() and card["reproduce"] == "ponder zoo train facts"
