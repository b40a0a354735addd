"""The `ponder` CLI: --json shape, --out files, zoo commands, and bad input -> one line, exit 2."""

import json
import subprocess
import sys

import pytest

from ponder.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json_prints_the_result_shape(capsys, tiny_model_folders):
    code, out, _ = _run(capsys, "generate", "text", "--model", str(tiny_model_folders["llama"]), "--prompt",
                        "Q: 1+2\n", "--n", "3", "--max-new-tokens", "5", "--seed", "4", "--verifier", "exact", "--json")
    assert code == 0
    res = json.loads(out)
    assert set(res) == {"best", "candidates", "compute", "config"}
    assert len(res["candidates"]) == 3 and res["config"]["seed"] == 4 and res["config"]["n"] == 3
    assert all(c["score"] == 0.0 for c in res["candidates"])  # random weights never solve arith
    assert res["compute"]["verifier_calls"] == 3 and res["compute"]["tokens"] > 0
    assert len({c["seed"] for c in res["candidates"]}) == 3


def test_generate_is_reproducible_from_the_cli(capsys, tiny_model_folders):
    args = ("generate", "text", "--model", str(tiny_model_folders["gpt2"]), "--prompt", "Q: 3\n", "--n", "2",
            "--max-new-tokens", "6", "--seed", "9", "--json")
    first = json.loads(_run(capsys, *args)[1])
    second = json.loads(_run(capsys, *args)[1])
    assert [c["output"] for c in first["candidates"]] == [c["output"] for c in second["candidates"]]


def test_generate_out_writes_result_and_candidate_files(capsys, tiny_model_folders, tmp_path):
    code, out, err = _run(capsys, "generate", "text", "--model", str(tiny_model_folders["llama"]), "--prompt", "Q: 7\n",
                          "--n", "2", "--max-new-tokens", "4", "--out", str(tmp_path / "run"))
    assert code == 0 and "candidate(s)" in err
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [c["file"] for c in saved["candidates"]] == ["candidate_000.txt", "candidate_001.txt"]
    assert saved["item"]["model"] == str(tiny_model_folders["llama"]) and saved["best_file"] == "best.txt"
    assert (tmp_path / "run" / "candidate_001.txt").read_text() == saved["candidates"][1]["output"]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("argv, needle", [
    (["--model", "/no/such/folder"], "/no/such/folder"),
    (["--model", "zoo:nope"], "zoo:nope"),
    (["--n", "0"], "--n"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "0"], "--top-p"),
    (["--strategy", "nope"], "nope"),
    (["--decoder", "nope"], "nope"),
])
def test_bad_input_exits_2_with_one_line(capsys, tiny_model_folders, argv, needle):
    base = {"--model": str(tiny_model_folders["llama"]), "--prompt": "Q: 1\n", "--max-new-tokens": "4"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    code, out, err = _run(capsys, "generate", "text", *flat)
    assert code == 2 and out == ""
    assert err.startswith("ponder: error:") and needle in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_prompt_longer_than_context_exits_2(capsys, tiny_model_folders):
    code, _, err = _run(capsys, "generate", "text", "--model", str(tiny_model_folders["llama"]), "--prompt",
                        "1" * 80, "--max-new-tokens", "4")
    assert code == 2 and "context of 64" in err


def test_unknown_modality_exits_2(capsys):
    code, _, err = _run(capsys, "generate", "video", "--model", "x", "--prompt", "y")
    assert code == 2 and "video" in err


def test_console_script_prints_no_traceback():
    out = subprocess.run([sys.executable, "-m", "ponder.cli", "generate", "text", "--model", "zoo:nope",
                          "--prompt", "x"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "unknown zoo name" in out.stderr


def test_zoo_list_and_sample(capsys):
    code, out, _ = _run(capsys, "zoo", "list", "--json")
    names = {row["name"] for row in json.loads(out)}
    assert code == 0 and {"arith", "arith-draft", "orm", "prm", "exact"} <= names
    code, out, _ = _run(capsys, "zoo", "sample", "arith", "--split", "heldout", "--count", "4", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 4
    assert all(r["split"] == "heldout" and r["solution"].endswith(f"A: {r['answer']}\n") for r in rows)


def test_zoo_sample_rejects_bad_split(capsys):
    code, _, err = _run(capsys, "zoo", "sample", "arith", "--split", "test")
    assert code == 2 and "test" in err


def test_zoo_train_rejects_unknown_name(capsys):
    code, _, err = _run(capsys, "zoo", "train", "nope")
    assert code == 2 and "unknown zoo name" in err


def test_out_that_is_a_file_exits_2_without_traceback(capsys, tiny_model_folders, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    code, out, err = _run(capsys, "generate", "text", "--model", str(tiny_model_folders["llama"]), "--prompt", "Q: 7\n",
                          "--max-new-tokens", "2", "--out", str(blocker))
    assert code == 2 and "taken" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


def test_zoo_train_smoke_from_the_cli_writes_a_loadable_model(capsys, tmp_path):
    code, out, _ = _run(capsys, "zoo", "train", "arith", "--smoke", "--out", str(tmp_path))
    assert code == 0 and json.loads(out)["name"] == "arith"
    code, out, _ = _run(capsys, "generate", "text", "--model", str(tmp_path / "arith"), "--prompt", "Q: 1+1\n",
                        "--max-new-tokens", "3", "--json")
    assert code == 0 and json.loads(out)["compute"]["model_calls"] >= 1
