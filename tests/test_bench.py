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
