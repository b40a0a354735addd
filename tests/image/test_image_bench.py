"""`ponder bench images` in quick mode: the --json shape, equal-NFE rows for every method, plots."""

from __future__ import annotations

import json

from ponder.bench import BENCHES, run
from ponder.bench.images import METHODS, paths_n, zero_order_shape


def test_budget_shapes_spend_exactly_the_budget():
    for evaluations in (2, 4, 8, 16, 32):
        n, iterations = zero_order_shape(evaluations)
        assert n * iterations == evaluations and n >= 2
    assert paths_n(8, 4) == 0 and paths_n(16, 4) == 1 and paths_n(128, 4) == 10


def test_quick_images_bench_has_the_json_shape_and_equal_nfe_rows(tmp_path, monkeypatch):
    import ponder.bench.images as images

    # part (b) is B's bench with its own tests; here only that its rows and goals are appended
    stub_goal = {"name": "sjd steps", "target": ">= 2", "value": 2.5, "met": True}
    monkeypatch.setattr(images, "_part_b", lambda quick, log: ([{"part": "b", "decoder": "sjd"}], [stub_goal]))
    assert "images" in BENCHES
    report = run("images", quick=True, plot_dir=tmp_path)
    json.dumps(report)  # JSON-serialisable as --json prints it
    assert report["bench"] == "images" and report["machine"]
    part_a = [r for r in report["rows"] if r["part"] == "a"]
    assert {(r["method"], r["nfe_budget"]) for r in part_a} == {
        (m, b) for m in METHODS for b in (8, 16) if not (m == "paths" and b == 8)}  # paths needs >= 12 NFEs
    for r in part_a:
        assert r["nfe_used"] <= r["nfe_budget"]
        if r["method"] != "paths":
            assert r["nfe_used"] == r["nfe_budget"]
        assert 0.0 <= r["judge_accuracy"] <= 1.0 and 0.0 <= r["verifier_score"] <= 1.0
        assert 0.0 <= r["judge_prob"] <= 1.0
    names = [g["name"] for g in report["goals"]]
    assert any(n.startswith("random judge_accuracy") for n in names)
    assert report["rows"][-1] == {"part": "b", "decoder": "sjd"} and report["goals"][-1] == stub_goal
    for g in report["goals"]:
        assert set(g) == {"name", "target", "value", "met"} and isinstance(g["met"], bool)
    assert (tmp_path / "images.png").stat().st_size > 0 and (tmp_path / "images-grid.png").stat().st_size > 0


def test_quick_ditto_bench_reports_every_method_with_standard_errors(monkeypatch):
    import ponder.bench.images_ditto as bench

    monkeypatch.setattr(bench, "STEPS", 3)
    monkeypatch.setattr(bench, "OPT_STEPS", 2)
    monkeypatch.setattr(bench, "OPT_STEPS_2", 2)
    report = run("images-ditto", quick=True)
    methods = [r["method"] for r in report["rows"] if "images" in r]
    # zoo:digits-student ships, so DITTO-2 also runs through it
    assert methods[:4] == ["ditto", "ditto-2", "ditto-2 (zoo:digits-student)", "plain"]
    assert methods[4].startswith("random (N=") and len(methods) == 5
    for row in report["rows"]:
        if "images" in row:
            assert row["images"] == 2 * bench.QUICK_SEEDS and row["logprob_se"] >= 0 and 0 <= row["judge_prob"] <= 1
    ditto_row = next(r for r in report["rows"] if r["method"] == "ditto")
    assert ditto_row["backward_per_image"] == 2 and ditto_row["nfe_per_image"] == 3 * (2 * 2 + 1)
    names = [g["name"] for g in report["goals"]]
    assert names[0].startswith("DITTO logprob gain") and any(n.startswith("DITTO-2 (student)") for n in names)


def test_mean_and_standard_error():
    from ponder.bench.images_ditto import mean_se

    assert mean_se([1.0, 3.0]) == (2.0, 1.0) and mean_se([5.0]) == (5.0, 0.0)
