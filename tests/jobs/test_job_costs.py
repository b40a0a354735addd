"""The cost model behind `ponder render --dry-run`'s estimate and the progress bar's ETA: a least
squares fit of an item's seconds on its prompt size and generated tokens, per model and machine."""

from __future__ import annotations

import json

import pytest

from ponder.cli import main
from ponder.jobs import parse_job, plan_dict, run_job
from ponder.jobs.costs import CostTable, format_seconds, machine


def _items(count, model="zoo:arith", n=2, strategy="sample"):
    job = parse_job({"defaults": {"modality": "text", "model": model, "strategy": strategy, "n": n},
                     "items": [{"id": f"i{k}", "prompt": "Q: " + "1+" * (k + 1) + "2\n", "seed": k}
                               for k in range(count)]})
    return job.items


def test_the_fit_recovers_a_linear_cost_and_predicts_unseen_items():
    table = CostTable()
    items = _items(8)
    spent = [13, 7, 22, 9, 30, 11, 18, 25]  # tokens generated, not in step with the prompt size
    for item, tokens in zip(items, spent):
        table.observe(item, tokens, 0.5 + 0.01 * item.n * len(item.prompt) + 0.02 * tokens)
    fresh = _items(12)[-1]
    per_candidate = sum(spent) / 16
    expected = 0.5 + 0.01 * fresh.n * len(fresh.prompt) + 0.02 * fresh.n * per_candidate
    assert table.predict(fresh) == pytest.approx(expected, rel=1e-6)
    total, unknown = table.estimate(_items(3) + _items(1, strategy="best-of-n"))
    assert unknown == ["text|zoo:arith|best-of-n|plain"] and total > 0


def test_few_observations_give_their_mean_and_none_give_nothing():
    table = CostTable()
    item = _items(1)[0]
    assert table.predict(item) is None
    table.observe(item, 5, 2.0)
    table.observe(item, 7, 4.0)
    assert table.predict(item) == pytest.approx(3.0)


def test_the_table_is_kept_per_machine_under_ponder_home(ponder_home):
    (ponder_home).mkdir(parents=True, exist_ok=True)
    (ponder_home / "costs.json").write_text(json.dumps({"another machine": {"g": [[1, 2, 1, 3.0]]}}))
    table = CostTable.load()
    assert table.observations == {}
    table.observe(_items(1)[0], 4, 1.5)
    table.save()
    saved = json.loads((ponder_home / "costs.json").read_text())
    assert set(saved) == {"another machine", machine()} and format_seconds(4000) == "66.7 min"


def test_a_job_fits_the_model_that_the_next_dry_run_estimates_with(tiny_model_folders, tmp_path, capsys):
    model = str(tiny_model_folders["llama"])

    def job(seeds):
        return parse_job({"defaults": {"modality": "text", "model": model, "options": {"max_new_tokens": 4}},
                          "items": [{"id": f"s{s}", "prompt": "Q: 1+2\n", "seed": s} for s in seeds]})

    before = plan_dict(job([0, 1, 2]), tmp_path / "out")
    assert before["estimate"]["seconds"] is None and before["estimate"]["unpredicted"]
    run_job(job([0, 1, 2]), tmp_path / "out", threads=1, progress=False)
    after = plan_dict(job(range(10)), tmp_path / "out")
    assert after["to_render"] == 7 and after["estimate"]["seconds"] > 0 and not after["estimate"]["unpredicted"]
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"defaults": {"modality": "text", "model": model}, "items": [{"prompt": "Q: 5\n"}]}))
    assert main(["render", str(path), "--out", str(tmp_path / "out2"), "--dry-run"]) == 0
    assert "estimated time on this machine:" in capsys.readouterr().out


def test_a_feature_that_never_varied_is_left_out_of_the_fit():
    """One prompt, many seeds: the prompt size cannot be told from the intercept, so a longer prompt
    is predicted by the intercept and the tokens alone, not by an arbitrary split."""
    table = CostTable()
    same_prompt = parse_job({"defaults": {"modality": "text", "model": "zoo:arith", "n": 2},
                             "items": [{"id": f"s{k}", "prompt": "Q: 1+2\n", "seed": k} for k in range(6)]}).items
    spent = [10, 14, 12, 18, 16, 20]
    for item, tokens in zip(same_prompt, spent):
        table.observe(item, tokens, 0.2 + 0.01 * tokens)
    longer = parse_job({"defaults": {"modality": "text", "model": "zoo:arith", "n": 2},
                        "items": [{"id": "x", "prompt": "Q: " + "1+" * 40 + "2\n"}]}).items[0]
    assert table.predict(longer) == pytest.approx(0.2 + 0.01 * 2 * sum(spent) / 12, rel=1e-6)


def test_the_worker_reports_the_time_it_spent_loading(tiny_model_folders):
    from ponder.jobs.worker import Worker

    worker = Worker(threads=1)
    try:
        spec = {"id": "a", "modality": "text", "model": str(tiny_model_folders["llama"]), "prompt": "Q: 1+2\n",
                "strategy": "sample", "n": 1, "verifier": None, "decoder": "plain", "seed": 0,
                "options": {"max_new_tokens": 3}}
        first = worker.render(spec, "h")
        second = worker.render({**spec, "id": "b", "seed": 1}, "h")
    finally:
        worker.close()
    assert first.files and 0 < first.load_seconds < first.seconds
    assert second.load_seconds == 0.0


def test_on_progress_reports_each_item_with_the_cost_models_eta(tiny_model_folders, tmp_path):
    model = str(tiny_model_folders["llama"])
    job = parse_job({"defaults": {"modality": "text", "model": model, "options": {"max_new_tokens": 4}},
                     "items": [{"id": f"s{s}", "prompt": "Q: 1+2\n", "seed": s} for s in range(5)]})
    calls = []
    run_job(job, tmp_path / "out", threads=1, progress=False, on_progress=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(k, 5) for k in range(1, 6)]
    assert calls[-1][2] == 0.0  # nothing left
    assert all(eta is not None and eta > 0 for _, _, eta in calls[:-1])  # fitted from the first item on
