"""The local runner: atomic files + manifest, resume, retries, failures that leave the job going."""

from __future__ import annotations

import errno
import json

import pytest
from jobfiles import check_files_match_manifest, read_output, snapshot, temp_files

from ponder.cli import main
from ponder.jobs import parse_job, run_job
from ponder.jobs.store import OutputDir

SMALL = {"max_new_tokens": 6}


def _job(model, *items, **defaults):
    return parse_job({"defaults": {"modality": "text", "model": str(model), "options": SMALL, **defaults},
                      "items": list(items)})


@pytest.fixture(scope="module")
def llama(tiny_model_folders):
    return tiny_model_folders["llama"]


def test_items_write_their_files_and_one_manifest_line_each(llama, tmp_path):
    job = _job(llama, {"id": "a", "prompt": "Q: 1+2\n", "n": 3, "strategy": "best-of-n", "verifier": "exact"},
               {"id": "b", "prompt": "Q: 3*4\n", "seed": 5})
    out = tmp_path / "out"
    summary = run_job(job, out, threads=1, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (2, 0, 0)
    latest, entries = read_output(out)
    assert [e["id"] for e in entries] == ["a", "b"]
    for entry in entries:
        assert entry["status"] == "done" and entry["error"] is None
        check_files_match_manifest(out, entry)
    assert sorted(latest["a"]["files"]) == ["a/best.txt", "a/candidate_000.txt", "a/candidate_001.txt",
                                            "a/candidate_002.txt", "a/result.json"]
    result = json.loads((out / "a" / "result.json").read_text())
    assert result["item"]["id"] == "a" and result["config"]["strategy"] == "best-of-n"
    assert (out / "a" / "best.txt").read_text() == result["best"]["output"]
    assert [c["file"] for c in result["candidates"]] == ["candidate_000.txt", "candidate_001.txt",
                                                         "candidate_002.txt"]
    assert "seconds" not in result["compute"] and latest["a"]["compute"]["seconds"] > 0
    assert latest["a"]["compute"]["verifier_calls"] == 3
    assert summary.compute["tokens"] == latest["a"]["compute"]["tokens"] + latest["b"]["compute"]["tokens"] > 0
    assert temp_files(out) == [] and not (out / ".ponder-render.lock").exists()


def test_a_second_run_skips_done_items_and_renders_only_what_changed(llama, tmp_path):
    items = [{"id": f"i{k}", "prompt": "Q: 1+2\n", "seed": k} for k in range(3)]
    out = tmp_path / "out"
    run_job(_job(llama, *items), out, threads=1, progress=False)
    before = snapshot(out)
    again = run_job(_job(llama, *items), out, threads=1, progress=False)
    assert (again.done, again.skipped) == (0, 3)
    assert snapshot(out) == before
    items[1]["seed"] = 99
    changed = run_job(_job(llama, *items), out, threads=1, progress=False)
    assert (changed.done, changed.skipped) == (1, 2)
    latest, entries = read_output(out)
    assert len(entries) == 4 and entries[-1]["id"] == "i1"
    assert json.loads((out / "i1" / "result.json").read_text())["item"]["seed"] == 99


def test_an_item_whose_file_went_missing_is_rendered_again(llama, tmp_path):
    out = tmp_path / "out"
    job = _job(llama, {"id": "a", "prompt": "Q: 1+2\n"}, {"id": "b", "prompt": "Q: 2+2\n"})
    run_job(job, out, threads=1, progress=False)
    original = (out / "b" / "best.txt").read_bytes()
    (out / "b" / "best.txt").unlink()
    again = run_job(job, out, threads=1, progress=False)
    assert (again.done, again.skipped) == (1, 1)
    assert (out / "b" / "best.txt").read_bytes() == original  # same seed, same bytes


def test_models_load_once_per_worker_with_items_grouped_by_model(tiny_model_folders, tmp_path, monkeypatch):
    from ponder import api

    loaded = []
    real_load = api.load

    def counting_load(modality, spec, **options):
        loaded.append(str(spec))
        return real_load(modality, spec, **options)

    monkeypatch.setattr(api, "load", counting_load)
    llama, gpt2 = tiny_model_folders["llama"], tiny_model_folders["gpt2"]
    # interleaved in the file: the runner groups them so each model loads once
    items = [{"id": f"x{k}", "prompt": "Q: 1+2\n", "seed": k, "model": str(llama if k % 2 else gpt2)}
             for k in range(6)]
    summary = run_job(_job(llama, *items), tmp_path / "out", threads=1, progress=False)
    assert summary.done == 6
    assert sorted(loaded) == sorted([str(llama), str(gpt2)])


def test_model_that_fails_to_load_fails_its_items_and_the_job_goes_on(llama, tmp_path, write_job, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    path = write_job({"defaults": {"modality": "text", "model": str(llama), "options": SMALL}, "items": [
        {"id": "good1", "prompt": "Q: 1+2\n"},
        {"id": "bad1", "prompt": "Q: 1+2\n", "model": str(broken)},
        {"id": "bad2", "prompt": "Q: 2+2\n", "model": str(broken)},
        {"id": "good2", "prompt": "Q: 2+2\n"}]})
    out = tmp_path / "out"
    code = main(["render", str(path), "--out", str(out), "--threads", "1", "--no-progress"])
    assert code == 1  # the exit status says something failed
    text = capsys.readouterr().out
    assert "2 done, 0 skipped, 2 failed of 4" in text and "failed bad1:" in text
    latest, _ = read_output(out)
    assert {k: v["status"] for k, v in latest.items()} == {"good1": "done", "good2": "done", "bad1": "failed",
                                                          "bad2": "failed"}
    assert "broken-model" in latest["bad1"]["error"] and latest["bad1"]["attempts"] == 1  # no retry of a load error
    assert not (out / "bad1").exists() and not (out / "bad2").exists()


def test_prompt_the_model_rejects_fails_that_item_only(llama, tmp_path):
    too_long = "Q: " + "1+" * 200 + "1\n"  # far beyond the tiny model's 64 positions
    job = _job(llama, {"id": "long", "prompt": too_long}, {"id": "fine", "prompt": "Q: 1+2\n"})
    summary = run_job(job, tmp_path / "out", threads=1, progress=False)
    assert (summary.done, summary.failed) == (1, 1)
    latest, _ = read_output(tmp_path / "out")
    assert latest["long"]["status"] == "failed" and "context" in latest["long"]["error"]
    assert latest["long"]["files"] == {} and not (tmp_path / "out" / "long").exists()


def test_disk_full_while_writing_fails_the_item_cleanly_then_resume_renders_it(llama, tmp_path, monkeypatch):
    from ponder.jobs import store

    real_write = store.write_atomic
    tries = []

    def full_disk(path, data):
        if path.parent.name == "victim" and path.name == "candidate_001.txt":
            tries.append(path)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "write_atomic", full_disk)
    job = _job(llama, {"id": "before", "prompt": "Q: 1+2\n"}, {"id": "victim", "prompt": "Q: 1+2\n", "n": 2},
               {"id": "after", "prompt": "Q: 2+2\n"})
    out = tmp_path / "out"
    summary = run_job(job, out, threads=1, retries=2, progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    assert len(tries) == 3  # one try and two retries
    latest, _ = read_output(out)
    assert latest["victim"]["status"] == "failed" and "No space left" in latest["victim"]["error"]
    assert latest["victim"]["attempts"] == 3
    assert not (out / "victim").exists() and temp_files(out) == []  # no half-written item
    monkeypatch.setattr(store, "write_atomic", real_write)
    resumed = run_job(job, out, threads=1, progress=False)
    assert (resumed.done, resumed.skipped, resumed.failed) == (1, 2, 0)
    latest, _ = read_output(out)
    assert latest["victim"]["status"] == "done"
    check_files_match_manifest(out, latest["victim"])


def test_an_unexpected_error_is_retried_and_a_persistent_one_recorded(llama, tmp_path, monkeypatch):
    from ponder.jobs.worker import Worker

    real_generate = Worker.generate
    calls: dict[str, int] = {}

    def flaky(self, spec):
        calls[spec["id"]] = calls.get(spec["id"], 0) + 1
        if spec["id"] == "flaky" and calls["flaky"] == 1 or spec["id"] == "broken":
            raise RuntimeError("simulated out of memory")
        return real_generate(self, spec)

    monkeypatch.setattr(Worker, "generate", flaky)
    job = _job(llama, {"id": "flaky", "prompt": "Q: 1+2\n"}, {"id": "broken", "prompt": "Q: 1+2\n"})
    summary = run_job(job, tmp_path / "out", threads=1, retries=1, progress=False)
    latest, _ = read_output(tmp_path / "out")
    assert (latest["flaky"]["status"], latest["flaky"]["attempts"]) == ("done", 2)
    assert (latest["broken"]["status"], latest["broken"]["attempts"]) == ("failed", 2)
    assert "RuntimeError: simulated out of memory" in latest["broken"]["error"]
    assert summary.failures == [{"id": "broken", "error": latest["broken"]["error"]}]


def test_nothing_is_written_outside_out(llama, tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file.txt").write_text("mine")
    before = snapshot(tmp_path)
    job = _job(llama, {"id": "a", "prompt": "Q: 1+2\n"}, {"id": "b..c", "prompt": "Q: 1+2\n"})
    run_job(job, tmp_path / "keep" / "out", threads=1, progress=False)
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("keep/out/")}
    assert after == before
    assert sorted(p.name for p in (tmp_path / "keep" / "out").iterdir()) == ["a", "b..c", "manifest.jsonl"]


def test_resume_cuts_a_torn_manifest_line_and_removes_temp_files(tmp_path):
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "x" / ".ponder-best.txt.abc.tmp").write_text("half")
    (out / "manifest.jsonl").write_text('{"id": "a", "status": "done"}\n{"id": "b", "sta')
    with OutputDir(out) as folder:
        assert temp_files(out) == []
        assert (out / "manifest.jsonl").read_text() == '{"id": "a", "status": "done"}\n'
        assert list(folder.read_manifest()) == ["a"]


def test_a_second_render_into_the_same_folder_is_refused(tmp_path):
    from ponder.errors import ConfigError

    with OutputDir(tmp_path / "out"), pytest.raises(ConfigError, match="another `ponder render`"):
        OutputDir(tmp_path / "out").open()


def test_cli_summary_and_progress(llama, tmp_path, write_job, capsys):
    path = write_job({"defaults": {"modality": "text", "model": str(llama), "options": SMALL},
                      "items": [{"id": "a", "prompt": "Q: 1+2\n"}]})
    assert main(["render", str(path), "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "1 done, 0 skipped, 0 failed of 1" in captured.out and "tokens" in captured.out
    assert "1/1" in captured.err  # the progress bar
    assert main(["render", str(path), "--out", str(tmp_path / "out"), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 1, 0)
