"""`--decoder auto`: picks the fastest lossless decoder of the nearest workload in a speed history
(never a lossy one, never one whose draft is missing, never another model's rows), falls back to plain
with a note when there is no history, runs what it picked, and records the choice; the bench's
history writer appends rows the chooser reads."""

from __future__ import annotations

import json

import pytest
from toys_decoding import ToyChain

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import candidate_generators
from ponder.search.decoding import auto, prompt_lookup
from ponder.search.decoding.auto import Workload, choose, history_path


def _row(decoder, speedup, batch=1, temperature=0.0, draft=None, model="m", kind="arith", lossy=False, **options):
    return {"model": model, "draft": draft, "batch": batch, "temperature": temperature, "prompt_kind": kind,
            "decoder": decoder, "options": options, "tok_s": 100 * speedup, "speedup_vs_plain": speedup,
            "lossy": lossy}


@pytest.fixture
def history(tmp_path):
    rows = [_row("plain", 1.0), _row("speculative", 1.5, draft="d", draft_len=4), _row("prompt-lookup", 1.2),
            _row("bild", 3.0, draft="d", lossy=True), _row("ead", 2.5, draft="d"),  # ead: lossy by registry
            _row("plain", 1.0, batch=8), _row("speculative", 0.8, batch=8, draft="d"),
            _row("layer-skip", 1.1, temperature=1.0), _row("speculative", 1.3, temperature=1.0, draft="d"),
            _row("medusa", 9.0, model="other")]
    path = tmp_path / "speed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    return path


def test_picks_the_fastest_lossless_decoder_of_the_nearest_workload(history):
    choice = choose(Workload("m", "d", 1, 0.0, "arith"), history, ["bild", "ead"])
    assert (choice.decoder, choice.options, choice.uses_draft, choice.distance) == \
        ("speculative", {"draft_len": 4}, True, 0.0)
    # no draft: the draft-model rows are out, prompt lookup wins
    assert choose(Workload("m", None, 1, 0.0, "arith"), history, ["bild", "ead"]).decoder == "prompt-lookup"
    # T = 1 is another bucket: its own rows decide
    assert choose(Workload("m", "d", 1, 1.0, "arith"), history, []).decoder == "speculative"
    assert choose(Workload("m", None, 1, 0.9, "arith"), history, []).decoder == "layer-skip"


def test_batch_size_is_a_feature_and_plain_wins_when_nothing_beats_it(history):
    # batch 4 is nearer batch 8 (log2 distance 1) than batch 1 (2): there speculative lost to plain
    choice = choose(Workload("m", "d", 4, 0.0, "arith"), history, [])
    assert choice.decoder == "plain" and choice.distance == 1.0 and choice.nearest["batch"] == 8
    assert "no lossless decoder beat plain" in choice.note


def test_no_history_or_other_model_falls_back_to_plain_with_a_note(tmp_path, history):
    missing = choose(Workload("m", "d", 1, 0.0), tmp_path / "none.jsonl", [])
    assert missing.decoder == "plain" and "no speed history" in missing.note
    other = choose(Workload("x", None, 1, 0.0), history, [])
    assert other.decoder == "plain" and "no speed history for model 'x'" in other.note


def test_history_path_honours_ponder_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PONDER_HOME", str(tmp_path))
    assert history_path() == tmp_path / "speed.jsonl"
    assert history_path(tmp_path / "h") == tmp_path / "h" / "speed.jsonl"
    assert history_path(tmp_path / "mine.jsonl") == tmp_path / "mine.jsonl"


def test_auto_runs_the_chosen_decoder(tmp_path):
    target = ToyChain(seed=0)  # named "toy0"
    path = tmp_path / "speed.jsonl"
    path.write_text(json.dumps(_row("prompt-lookup", 1.4, model="toy0", draft_len=3)) + "\n")
    prompts = [[0, 1, 2, 0, 1, 2, 0, 1]] * 2
    stats: dict = {}
    out = auto(target, prompts, sampling=SamplingParams(), max_new_tokens=8, history=str(path), stats=stats,
               generators=candidate_generators(1, range(2)))
    ref = prompt_lookup(target, prompts, sampling=SamplingParams(), max_new_tokens=8, draft_len=3,
                        generators=candidate_generators(1, range(2)))
    assert out.tokens == ref.tokens
    assert stats["auto"]["decoder"] == "prompt-lookup" and stats["accepted"] > 0
    with pytest.raises(ConfigError, match="prompt_kind"):
        auto(target, prompts, sampling=SamplingParams(), max_new_tokens=2, history=str(path), prompt_kind=3)


def test_generate_records_what_auto_chose(tiny_model_folders, tmp_path):
    import ponder

    model = ponder.load("text", str(tiny_model_folders["llama"]))
    res = ponder.generate(model, "Q: 1+2\n", decoder="auto", history=str(tmp_path), max_new_tokens=4)
    assert res.config["auto"]["decoder"] == "plain" and "no speed history" in res.config["auto"]["note"]
    (tmp_path / "speed.jsonl").write_text(json.dumps(_row("prompt-lookup", 1.3, model=model.name, temperature=1.0,
                                                          draft_len=2)) + "\n")
    res = ponder.generate(model, "Q: 1+2\n", decoder="auto", history=str(tmp_path), max_new_tokens=6, seed=3)
    ref = ponder.generate(model, "Q: 1+2\n", decoder="prompt-lookup", draft_len=2, max_new_tokens=6, seed=3)
    assert res.config["auto"]["decoder"] == "prompt-lookup" and res.config["decoder"] == "prompt-lookup"
    assert res.best.output == ref.best.output and res.config["lossy"] is False


def test_bench_history_writer_appends_rows_the_chooser_reads(tmp_path):
    from ponder.bench.speculative import record_history

    spec = {"decoder": "layer-skip", "draft": None, "options": {"draft_len": 6}}
    rows = [{"workload": "arith", "T": 0.0, "batch": 1, "decoder": "layer-skip", "tok_s": 50.0,
             "speedup_vs_plain": 1.2, "lossy": False, "model": "zoo:arith", "spec": spec},
            {"workload": "arith", "T": 0.0, "batch": 1, "decoder": "hf-plain", "tok_s": 40.0,
             "speedup_vs_plain": 1.0, "lossy": False}]  # no spec: not a ponder decoder, not recorded
    record_history(rows, tmp_path)
    record_history(rows, tmp_path)
    lines = (tmp_path / "speed.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["decoder"] == "layer-skip"
    choice = choose(Workload("zoo:arith", None, 1, 0.0, "arith"), tmp_path / "speed.jsonl", [])
    assert choice.decoder == "layer-skip" and choice.options == {"draft_len": 6}


def test_an_unknown_prompt_kind_scores_each_decoder_by_its_mean_over_the_tied_workloads(tmp_path):
    path = tmp_path / "speed.jsonl"
    rows = [_row("prompt-lookup", 1.1, kind="arith"), _row("prompt-lookup", 1.9, kind="copy"),
            _row("speculative", 1.6, draft="d", kind="arith")]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # prompt lookup's best single row (1.9, copy) loses to speculative's 1.6 against its mean of 1.5
    choice = choose(Workload("m", "d", 1, 0.0, None), path, [])
    assert choice.decoder == "speculative" and choice.distance == 0.5
    assert choose(Workload("m", "d", 1, 0.0, "copy"), path, []).decoder == "prompt-lookup"
