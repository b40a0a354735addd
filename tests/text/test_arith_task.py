"""The arith zoo task: splits, solutions, answer parsing, step labels, tokenizer."""


import pytest

from ponder.modalities.text import arith


def test_train_and_heldout_splits_never_overlap():
    train = {p.expression for p in arith.problems("train", 3000, seed=0)}
    held = {p.expression for p in arith.problems("heldout", 300, seed=0)}
    assert not train & held
    assert all(arith.split_of(e) == "heldout" for e in held)
    stream = arith.train_stream(seed=1)
    assert all(next(stream).split == "train" for _ in range(2000))


def test_problems_are_deterministic_in_seed_and_distinct():
    a = arith.problems("heldout", 50, seed=4)
    assert a == arith.problems("heldout", 50, seed=4)
    assert a != arith.problems("heldout", 50, seed=5)
    assert len({p.expression for p in a}) == 50


def test_solution_follows_precedence_and_ends_in_the_true_answer():
    p = arith.Problem((37, 48, 2, 19), ("+", "*", "-"))
    assert p.solution() == "48*2=96\n37+96=133\n133-19=114\nA: 114\n"
    assert p.answer == eval(p.expression) == 114
    r = p.with_template("R")
    assert r.solution() == "=37+96-19\n=133-19\n=114\nA: 114\n"
    for q in arith.problems("train", 200, seed=2):
        assert q.answer == eval(q.expression)
        assert arith.is_correct(q.prompt, q.solution())


def test_parse_prompt_round_trips_and_rejects_non_problems():
    p = arith.problems("heldout", 1, seed=0, template="R")[0]
    assert arith.parse_prompt(p.prompt) == p
    assert arith.parse_prompt("hello") is None
    assert arith.parse_prompt("Q: 12\n") is None


def test_extract_answer_and_is_correct():
    assert arith.extract_answer("1+2=3\nA: -17\n") == -17
    assert arith.extract_answer("no answer") is None
    assert not arith.is_correct("Q: 1+2*3\n", "2*3=6\n1+6=7\nA: 8\n")
    assert arith.is_correct("Q: 1+2*3\n", "2*3=6\n1+6=7\nA: 7\n")


def test_step_labels_turn_false_from_the_first_wrong_step_on():
    prompt = "Q: 1+2*3-4\n"
    assert arith.step_labels(prompt, "2*3=6\n1+6=7\n7-4=3\nA: 3\n") == [True] * 4
    assert arith.step_labels(prompt, "2*3=6\n1+6=8\n8-4=4\nA: 4\n") == [True, False, False, False]


def test_problem_split_and_template_validation():
    with pytest.raises(ValueError, match="split"):
        arith.problems("test", 1)
    with pytest.raises(ValueError, match="template"):
        arith.problems("train", 1, template="X")


def test_char_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    tok = arith.build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Q: 12+34*5-6\n34*5=170\nA: 176\n"
    ids = loaded(text)["input_ids"]
    assert ids[0] == loaded.bos_token_id and len(ids) == len(text) + 1
    assert loaded.decode(ids, skip_special_tokens=True) == text
    assert loaded.padding_side == "left"
