"""`ponder bench --json` prints the shape DESIGN.md gives, goals included (figures are not asserted:
they are measured by the bench, on whatever machine runs it)."""

import json

import pytest

from ponder.cli import main


def _check_shape(report, name):
    assert report["bench"] == name and isinstance(report["machine"], str) and report["machine"]
    assert report["rows"] and all(isinstance(r, dict) for r in report["rows"])
    assert report["goals"]
    for g in report["goals"]:
        assert set(g) == {"name", "target", "value", "met"}
        assert isinstance(g["met"], bool) and isinstance(g["value"], float)


@pytest.mark.parametrize("name", ["text-overhead", "text-zoo", "text-verifiers", "text-scaling"])
def test_bench_json_has_the_design_shape(capsys, tmp_path, name):
    code = main(["bench", name, "--quick", "--json", "--plot", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    _check_shape(report, name)
    assert code == (0 if all(g["met"] for g in report["goals"]) else 1)
    if name == "text-scaling":  # writes its JSON and plot; pool picks equal real runs of each strategy
        saved = json.loads((tmp_path / "text-scaling.json").read_text())
        assert saved["rows"] == report["rows"] and (tmp_path / "text-scaling.png").stat().st_size > 10_000
        assert saved["pool_mismatches"] == 0
        assert {r["method"] for r in report["rows"]} >= {"best-of-n/orm", "weighted-best-of-n/orm", "self-consistency",
                                                          "beam/prm", "particles/prm", "compute-optimal/prm"}
    if name == "text-overhead":  # the ratio is the two sides measured in this run
        for row in report["rows"]:
            assert row["ratio"] == pytest.approx(row["ponder_tok_s"] / row["hf_tok_s"], rel=1e-2)


def test_unknown_bench_exits_2(capsys):
    assert main(["bench", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_text_scaling_state_resumes_skips_torn_lines_and_restarts_on_other_models(tmp_path):
    from ponder.bench.text_scaling import _State

    path = tmp_path / "state.jsonl"
    made = []
    state = _State(path, "fp-a")
    assert state.get("pool/1.0/0", lambda: made.append(0) or {"x": 1}) == {"x": 1}
    state.get("real/beam/4/0", lambda: made.append(1) or {"correct": True})
    with path.open("a") as f:
        f.write('{"key": "real/beam/4/1", "val')  # a kill mid-write
    again = _State(path, "fp-a")
    assert again.get("pool/1.0/0", lambda: made.append(2) or {"x": 2}) == {"x": 1}  # reused, not redone
    assert again.get("real/beam/4/1", lambda: made.append(3) or {"correct": False}) == {"correct": False}
    assert made == [0, 1, 3]
    other = _State(path, "fp-b")  # other models or settings: nothing is reused
    assert other.get("pool/1.0/0", lambda: {"x": 3}) == {"x": 3}
