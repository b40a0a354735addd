"""Job files: matrix expansion, defaults, one-line errors naming the item and field, --dry-run."""

from __future__ import annotations

import json

import pytest

from ponder.cli import main
from ponder.errors import ConfigError
from ponder.jobs import load_job, parse_job

BASE = {"modality": "text", "model": "zoo:arith"}


def test_matrix_expands_prompts_times_seeds_times_strategies():
    job = parse_job({
        "defaults": {**BASE, "verifier": "exact", "n": 2},
        "matrix": {"seed": [0, 1, 2], "strategy": ["sample", "best-of-n"]},
        "items": [{"id": "q", "matrix": {"prompt": ["Q: 1+2\n", "Q: 3*4\n"]}}],
    })
    assert len(job) == 2 * 3 * 2
    ids = [item.id for item in job.items]
    assert ids[0] == "q.seed-0.strategy-sample.prompt0"
    assert "q.seed-2.strategy-best-of-n.prompt1" in ids
    assert len(set(ids)) == len(ids)
    # prompts are named by index, never by their text
    assert all("Q:" not in i and "/" not in i for i in ids)
    assert {(i.seed, i.strategy, i.prompt) for i in job.items} == {
        (s, st, p) for s in (0, 1, 2) for st in ("sample", "best-of-n") for p in ("Q: 1+2\n", "Q: 3*4\n")}


def test_item_fields_override_defaults_and_options_merge_key_by_key():
    job = parse_job({
        "defaults": {**BASE, "n": 4, "options": {"max_new_tokens": 16, "temperature": 0.5}},
        "items": [{"id": "a", "prompt": "Q: 1+2\n"},
                  {"id": "b", "prompt": "Q: 1+2\n", "n": 1, "options": {"temperature": 0.0}}],
    })
    a, b = job.items
    assert (a.n, a.options) == (4, {"max_new_tokens": 16, "temperature": 0.5})
    assert (b.n, b.options) == (1, {"max_new_tokens": 16, "temperature": 0.0})
    assert (a.strategy, a.decoder, a.seed, a.verifier) == ("sample", "plain", 0, None)


def test_items_without_id_are_numbered_by_position():
    job = parse_job({"defaults": BASE, "items": [{"prompt": "Q: 1+2\n"}, {"prompt": "Q: 2+2\n"}]})
    assert [i.id for i in job.items] == ["item-0001", "item-0002"]


def test_config_hash_ignores_the_id_and_follows_every_other_field():
    one, two, three = parse_job({"defaults": BASE, "items": [
        {"id": "a", "prompt": "Q: 1+2\n"}, {"id": "b", "prompt": "Q: 1+2\n"},
        {"id": "c", "prompt": "Q: 1+2\n", "seed": 1}]}).items
    assert one.config_hash == two.config_hash != three.config_hash
    assert len(one.config_hash) == 64


@pytest.mark.parametrize("items, expect", [
    ([{"id": "ok", "prompt": "p"}, {"id": "bad", "prompt": "p", "n": 0}], ["item 2", "'n'", "greater than 0"]),
    ([{"id": "x", "prompt": "p", "strategy": "best-of-tea"}], ["'x'", "best-of-tea", "best-of-n"]),
    ([{"id": "x", "prompt": "p", "colour": "red"}], ["item 1", "'colour'", "unknown field"]),
    ([{"id": "../escape", "prompt": "p"}], ["item 1", "'id'"]),
    ([{"id": "/abs", "prompt": "p"}], ["item 1", "'id'"]),
    ([{"id": "manifest.jsonl", "prompt": "p"}], ["reserved"]),
    ([{"id": "x", "prompt": "p", "verifier": "oracle"}], ["'x'", "oracle", "exact"]),
    ([{"id": "x", "prompt": "p", "model": "zoo:nope"}], ["'x'", "zoo:nope"]),
    ([{"id": "x", "prompt": "p", "model": "zoo:orm"}], ["'x'", "verifier"]),
    ([{"id": "x", "prompt": "p", "options": {"beam_width": 2}}], ["'x'", "beam_width"]),
    ([{"id": "x", "prompt": "p", "options": {"temperature": -1}}], ["'x'", "temperature"]),
    ([{"id": "x", "prompt": "p", "options": {"max_new_tokens": 0}}], ["'x'", "max_new_tokens"]),
    ([{"id": "x", "prompt": "p", "seed": "zero"}], ["item 1", "'seed'"]),
    ([{"id": "x", "prompt": ""}], ["item 1", "'prompt'"]),
    ([{"id": "x", "prompt": "p"}, {"id": "x", "prompt": "q"}], ["two items", "'x'"]),
    ([{"id": "x", "prompt": "p", "matrix": {"n": []}}], ["'n'", "no values"]),
    ([{"id": "x", "prompt": "p", "matrix": {"prompt": ["a"]}}], ["'prompt'", "set by the item"]),
])
def test_bad_items_fail_with_one_line_naming_item_and_field(items, expect):
    with pytest.raises(ConfigError) as info:
        parse_job({"defaults": BASE, "items": items})
    message = str(info.value)
    assert "\n" not in message
    for part in expect:
        assert part in message, (part, message)


def test_missing_model_names_the_field_and_where_to_set_it():
    with pytest.raises(ConfigError, match="missing field 'model'.*defaults"):
        parse_job({"defaults": {"modality": "text"}, "items": [{"id": "a", "prompt": "p"}]})


def test_jsonl_job_has_one_item_per_line(write_job):
    path = write_job([{**BASE, "id": "a", "prompt": "Q: 1+2\n"}, {**BASE, "id": "b", "prompt": "Q: 3+4\n", "n": 2}],
                     name="job.jsonl")
    job = load_job(path)
    assert [(i.id, i.n) for i in job.items] == [("a", 1), ("b", 2)]


def test_jsonl_error_names_the_line(write_job):
    path = write_job('{"id": "a"}\n{not json\n', name="job.jsonl")
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        load_job(path)


def test_dry_run_prints_the_expanded_plan_and_writes_nothing(write_job, tmp_path, capsys):
    path = write_job({"defaults": BASE, "matrix": {"seed": [0, 1, 2]},
                      "items": [{"id": "a", "prompt": "Q: 1+2\n", "n": 2}, {"id": "b", "prompt": "Q: 3+4\n"}]})
    out = tmp_path / "out"
    assert main(["render", str(path), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "a.seed-2" in text and "b.seed-0" in text
    assert "6 items (6 to render, 0 already done" in text and "9 candidates" in text
    assert main(["render", str(path), "--out", str(out), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["items"] == 6 and len(plan["plan"]) == 6 and plan["models"] == {"text:zoo:arith": 6}
    assert not out.exists()


def test_cli_bad_job_file_is_one_stderr_line_and_exit_2(write_job, tmp_path, capsys):
    path = write_job({"defaults": BASE, "items": [{"id": "a", "prompt": "p", "n": -3}]})
    out = tmp_path / "out"
    assert main(["render", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ponder: error:") and "'n'" in err[0]
    assert not out.exists()
