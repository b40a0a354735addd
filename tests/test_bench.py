"""`ponder bench --json` prints the shape DESIGN.md gives, goals included (figures are not asserted:
they are measured by the bench, on whatever machine runs it)."""

import json

import pytest
import torch

from ponder.cli import main


def _check_shape(report, name):
    assert report["bench"] == name and isinstance(report["machine"], str) and report["machine"]
    assert report["rows"] and all(isinstance(r, dict) for r in report["rows"])
    assert report["goals"]
    for g in report["goals"]:
        assert set(g) == {"name", "target", "value", "met"}
        assert isinstance(g["met"], bool) and isinstance(g["value"], float)


@pytest.mark.parametrize("name", ["text-overhead", "text-zoo", "text-verifiers", "text-scaling", "render", "context"])
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


# ---- bench speculative: implementation efficiency (cost model of ponder.bench.speculative_costs) ----------


def test_efficiency_is_measured_over_predicted_speedup_of_the_bare_calls():
    from ponder.bench.speculative_costs import Call, efficiency_fields, model_seconds

    step, verify5 = Call("target", "step", 1, 1, 8), Call("target", "step", 1, 5, 8)
    draft1 = Call("draft", "step", 1, 1, 1)
    prefill, draft_prefill = Call("target", "prefill", 1, 14, 8), Call("draft", "prefill", 1, 14, 1)
    partial = Call("target", "step", 1, 1, 4)  # a layer-skip draft step: draft time, not verify time
    costs = {step: 0.010, verify5: 0.013, draft1: 0.001, prefill: 0.020, draft_prefill: 0.002, partial: 0.005}
    # plain: 1 prefill + 99 steps for 100 tokens; speculative: 40 verify passes of 5, 160 draft steps, 100 tokens
    plain = model_seconds({prefill: [1, 0], step: [99, 3000]}, costs, target_layers=8)
    spec = model_seconds({prefill: [1, 0], draft_prefill: [1, 0], verify5: [40, 1200], draft1: [160, 4000],
                          partial: [10, 300]}, costs, target_layers=8)
    assert plain["model_s"] == pytest.approx(0.020 + 99 * 0.010)
    assert spec["verify_s"] == pytest.approx(40 * 0.013) and spec["verify_calls"] == 40
    assert spec["verify_tokens"] == 200 and spec["prefill_s"] == pytest.approx(0.022)
    assert spec["draft_s"] == pytest.approx(160 * 0.001 + 10 * 0.005)
    fields = efficiency_fields({"tokens": 100, "seconds": 0.80, **spec}, {"tokens": 100, "seconds": 1.10, **plain})
    predicted = (1.010 / 100) / (spec["model_s"] / 100)  # 1.010 s of plain's bare calls vs 0.752 s
    assert fields["predicted_speedup"] == pytest.approx(predicted) and predicted == pytest.approx(1.3431, abs=1e-4)
    assert fields["efficiency"] == pytest.approx((1.10 / 0.80) / predicted)  # measured 1.375x
    assert fields["bare_share"] == pytest.approx(spec["model_s"] / 0.80)


@pytest.fixture(scope="module")
def arith_models():
    import ponder

    return {"target": ponder.load("text", "zoo:arith"), "draft": ponder.load("text", "zoo:arith-draft"),
            "heads": ponder.load("text", "zoo:arith-medusa"), "chimera": ponder.load("text", "zoo:arith-chimera")}


def test_census_counts_every_bare_call_the_decoders_count(arith_models):
    from ponder.bench.speculative_costs import EXTEND, HEADS, Census
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.decoding import chimera, layer_skip, medusa, speculative, tree

    target, draft, heads = arith_models["target"], arith_models["draft"], arith_models["heads"]
    census = Census(arith_models)
    ids = [target.encode("Q: 17+25=?\n"), target.encode("Q: 3*14-5=?\n")]
    for decoder, options in ((speculative, {"draft": draft, "draft_len": 3}), (medusa, {"draft": heads}),
                             (medusa, {"draft": heads, "tree_width": 3}), (layer_skip, {}), (tree, {"draft": draft}),
                             (chimera, {"draft": arith_models["chimera"]}),
                             (chimera, {"draft": arith_models["chimera"], "tree_width": 2})):
        for batch in ([ids[0]], ids):
            stats = {}
            with census.recording() as tally:
                out = decoder(target, batch, sampling=SamplingParams(temperature=1.0), max_new_tokens=16,
                              stats=stats, **options)
            full = [(c, n) for c, (n, _) in tally.items() if c.role == "target" and c.layers == target.num_layers]
            assert sum(n for _, n in full) == out.compute.model_calls
            assert sum(n for c, n in full if c.kind == "prefill") == 1
            assert all(c.batch == len(batch) for c in tally)
            drafted = sum(n for c, (n, _) in tally.items()
                          if c.role in ("draft", "chimera") or c.role == "target" and c.layers < target.num_layers)
            assert drafted == out.compute.draft_calls
            assert all(c.kind == EXTEND for c in tally if c.role == "chimera")
            heads_calls = sum(n for c, (n, _) in tally.items() if c.kind == HEADS)
            assert heads_calls == (stats["steps"] if decoder is medusa else 0)
            if decoder is speculative:  # verify passes feed the last token and at most 3 drafts
                assert {c.width for c, _ in full if c.kind != "prefill"} <= {1, 2, 3, 4}
            if options.get("tree_width") == 3:
                assert any(c.kind == "tree" for c, _ in full)
    with census.recording():
        pass
    assert not target.model._forward_pre_hooks and not heads.blocks[0]._forward_pre_hooks  # nothing left behind
    assert "extend" not in vars(arith_models["chimera"])


def test_bare_calls_time_every_shape_the_census_can_record(arith_models):
    from ponder.bench.speculative_costs import EXTEND, HEADS, Call, measure_costs

    target = arith_models["target"]
    shapes = [Call("target", "prefill", 1, 12, 8), Call("target", "prefill", 2, 12, 8, padded=True),
              Call("target", "step", 1, 1, 8), Call("target", "step", 2, 5, 8, padded=True),
              Call("target", "tree", 1, 7, 8), Call("target", "step", 1, 1, 4), Call("draft", "step", 1, 2, 1),
              Call("draft", "tree", 1, 4, 1), Call("heads", HEADS, 1, 1, 0), Call("chimera", EXTEND, 2, 3, 0)]
    tally = {call: [3, 3 * (0 if call.kind == "prefill" else 30)] for call in shapes}
    costs = measure_costs(arith_models, tally, target.encode("Q: 17+25=?\n"), repeats=1, min_seconds=0.0)
    assert set(costs) == set(shapes) and all(0 < c < 5 for c in costs.values())


def test_speculative_bench_rows_carry_predicted_speedup_and_efficiency(monkeypatch, tmp_path):
    from ponder.bench import speculative as bench

    monkeypatch.setenv("PONDER_HOME", str(tmp_path))
    workload = next(w for w in bench.WORKLOADS if w.sampled_vs_hf)
    keep = {"plain", "speculative", "prompt-lookup", "medusa", "medusa-tree", "layer-skip"}
    rows, results, _ = bench.measure_workload(workload, bench._Models(), quick=True, keep=keep)
    sides = {r["decoder"]: r for r in rows if r["workload"] == workload.name and "tok_s" in r}
    assert set(sides) == keep
    assert sides["plain"]["predicted_speedup"] == 1.0 and sides["plain"]["efficiency"] == pytest.approx(1.0)
    for row in sides.values():
        assert row["efficiency"] == pytest.approx(row["speedup_vs_plain"] / row["predicted_speedup"], rel=0.01)
        assert 0 < row["bare_share"] and row["verify_ms"] > 0
    assert sides["speculative"]["draft_calls_per_step"] >= 1 and sides["speculative"]["verify_width"] > 1
    assert sides["plain"]["verify_width"] == 1 and sides["plain"]["draft_ms_per_step"] == 0
    costs = next(r["costs_ms"] for r in rows if r["decoder"] == "(bare calls, ms)")
    assert "target step w=1" in costs and "heads" in costs and any("layers" in k for k in costs)
    goals = bench.efficiency_goals(rows)
    assert {g["name"].split()[0] for g in goals} == {"speculative", "prompt-lookup", "medusa", "layer-skip"}
    fixed = [r for r in rows if r["workload"].startswith(f"{workload.name} fixed")]
    assert {(r["decoder"], r["top_p"]) for r in fixed} == {(d, p) for d in ("plain", "hf-plain")
                                                           for p in bench.SAMPLED_TOP_PS}
    for top_p in bench.SAMPLED_TOP_PS:
        ours, hf = (next(r for r in fixed if r["decoder"] == d and r["top_p"] == top_p) for d in ("plain", "hf-plain"))
        assert ours["tokens"] == hf["tokens"] and hf["vs_hf_generate"] == 1.0
        assert ours["vs_hf_generate"] == pytest.approx(ours["tok_s"] / hf["tok_s"], rel=0.05)  # tok_s are rounded
        assert results[(workload.name, workload.temperature, f"plain/hf fixed top_p={top_p}")] == pytest.approx(
            ours["vs_hf_generate"], rel=0.01)


@pytest.mark.slow
def test_speculative_bench_json_has_the_design_shape_and_efficiency_goals(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PONDER_HOME", str(tmp_path))
    code = main(["bench", "speculative", "--quick", "--json"])
    report = json.loads(capsys.readouterr().out)
    _check_shape(report, "speculative")
    assert code == (0 if all(g["met"] for g in report["goals"]) else 1)
    ponder_rows = [r for r in report["rows"] if r.get("draft_calls") is not None]
    assert ponder_rows and all(r["predicted_speedup"] > 0 and r["efficiency"] > 0 for r in ponder_rows)
    names = [g["name"] for g in report["goals"]]
    assert any(n.startswith("speculative implementation efficiency") for n in names)
    assert any(n.startswith("plain / HF generate tokens/s, arith, T=1,") for n in names)
    assert any(n.startswith("chimera tokens per target call") for n in names)
    assert any(n.startswith("best train-free") and "pycode" in n for n in names)


def test_speculative_bench_runs_chimera_and_the_pycode_workload(monkeypatch, tmp_path):
    """Chimera's chain and tree sides on arith, and the pycode workload's real-code prompts next to HF
    prompt lookup: the same tokens from every lossless side (greedy), efficiency counted for chimera."""
    from ponder.bench import speculative as bench

    monkeypatch.setenv("PONDER_HOME", str(tmp_path))
    models = bench._Models()
    arith = next(w for w in bench.WORKLOADS if w.name == "arith" and w.temperature == 0.0)
    rows, _, _ = bench.measure_workload(arith, models, quick=True, keep={"plain", "chimera", "chimera-tree"})
    sides = {r["decoder"]: r for r in rows if "tok_s" in r and r["batch"] == 1}
    assert set(sides) == {"plain", "chimera", "chimera-tree"}
    assert sides["chimera"]["tokens"] == sides["plain"]["tokens"] == sides["chimera-tree"]["tokens"]
    assert sides["chimera"]["tokens_per_target_call"] > 1.5 and sides["chimera"]["efficiency"] > 0
    assert sides["chimera"]["spec"]["options"]["draft_len"] == bench.CHIMERA_LEN
    pycode = next(w for w in bench.WORKLOADS if w.name == "pycode")
    keep = {"plain", "prompt-lookup", "hf-prompt-lookup", "hf-plain"}
    rows, results, _ = bench.measure_workload(pycode, models, quick=True, keep=keep)
    sides = {r["decoder"]: r for r in rows if "tok_s" in r}
    assert set(sides) == keep and all(r["workload"] == "pycode" for r in sides.values())
    assert len({r["tokens"] for r in sides.values()}) == 1  # greedy: every side emits the same continuation
    assert sides["prompt-lookup"]["tokens_per_target_call"] > 1.0
    assert set(results) == {("pycode", 0.0, d) for d in keep}


def test_kernels_bench_measures_both_paths_in_one_run(monkeypatch):
    """best-of-N through today's path and the cascade cache: the ratios are those of the two caches
    measured here, the cascade one allocates and reads far less, and the samples are the same."""
    from ponder.bench import kernels

    monkeypatch.setattr(kernels, "CANDIDATES", 8)
    monkeypatch.setattr(kernels, "NEW_TOKENS", 6)
    rows, goals = kernels._best_of_64("arith", "zoo:arith", lambda m: kernels._arith_prompt(m, 120), 1)
    (row,) = rows
    assert row["prompt_tokens"] == 120 and row["ideal"] == pytest.approx(8 * 126 / (120 + 8 * 6), rel=1e-3)
    assert row["alloc_ratio"] == pytest.approx(row["today_alloc_MiB"] / row["cascade_alloc_MiB"], rel=1e-2)
    assert row["alloc_ratio"] > 3 and row["read_ratio"] > 3 and row["paged_ratio"] > 2
    assert row["same_samples"] == 1.0
    assert {g["name"].split(": ")[1] for g in goals} >= {"best-of-64 wall time cascade / today"}


def test_kernel_bandwidth_and_cascade_speedup_run_on_any_device():
    from ponder.bench.kernels import cascade_speedup, kernel_bandwidth

    rows = kernel_bandwidth("cpu", contexts=[64, 100], batches=[1, 3], backends=("sdpa", "reference", "xformers"),
                            heads=4, kv_heads=2, head_dim=16, dtype=torch.float32, repeats=1)
    measured = [r for r in rows if "GB_s" in r]
    assert {(r["backend"], r["context"], r["batch"]) for r in measured} == {
        (b, c, n) for b in ("sdpa", "reference") for c in (64, 100) for n in (1, 3)}
    assert all(r["GB_s"] > 0 and 0 < r["fraction_of_copy_bw"] for r in measured)
    assert all("note" in r for r in rows if r["backend"] == "xformers")
    result = cascade_speedup("cpu", rows=4, prefix=64, suffix=8, backend="reference", heads=4, kv_heads=2,
                             head_dim=16, dtype=torch.float32, repeats=1)
    assert result["speedup"] > 0


def test_bench_device_mode_is_refused_clearly(capsys):
    assert main(["bench", "text-overhead", "--device", "cuda"]) == 2
    assert "takes no --device; --device is for: kernels" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "kernels", "--device", "cuda"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
