"""zoo:pycode: the stdlib corpus and its split, the BPE tokenizer, the recipes end to end in smoke mode
(tiny shapes, two steps, a handful of files), the file-set warning, the bench workload, and the
shipped weights against their card."""

import json
import shutil

import pytest
import torch

import ponder
from ponder import zoo
from ponder.modalities.text import pycode
from ponder.modalities.text import train_pycode as recipes


@pytest.fixture(scope="module")
def files():
    return pycode.source_files()


@pytest.fixture()
def fake_stdlib(tmp_path):
    """A tiny stand-in for a standard library folder, with what the file list must skip."""
    root = tmp_path / "lib"
    for rel, text in {"abc.py": "x = 1\n", "json/decoder.py": "def f():\n    return 2\n",
                      "json/tests/test_x.py": "assert 1\n", "test/test_os.py": "pass\n",
                      "site-packages/pkg/mod.py": "pass\n", "idlelib/run.py": "pass\n",
                      "_sysconfigdata_x.py": "build = {}\n", "README.txt": "not code\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# ---- files and split ------------------------------------------------------------------------------


def test_file_list_is_sorted_relative_and_skips_tests_packages_and_build_files(fake_stdlib, files):
    assert pycode.source_files(fake_stdlib) == ["abc.py", "json/decoder.py"]
    assert files == sorted(files) and len(files) > 100
    assert not any(set(f.split("/")[:-1]) & pycode.SKIP_DIRS for f in files)
    assert not any(f.split("/")[0] in pycode.SKIP_TOP or f.startswith("_sysconfigdata") for f in files)
    assert {"argparse.py", "json/decoder.py", "asyncio/tasks.py"} <= set(files)


def test_split_is_a_pure_function_of_the_path_and_disjoint(fake_stdlib, files):
    # pinned: a refactor that changed the rule would move files between the splits
    assert [pycode.split_of(p) for p in ("_pydecimal.py", "compileall.py", "argparse.py", "typing.py")] == \
        ["heldout", "heldout", "train", "train"]
    train, heldout = pycode.split_files("train", files=files), pycode.split_files("heldout", files=files)
    assert not set(train) & set(heldout) and sorted(train + heldout) == files
    assert 0.05 < len(heldout) / len(files) < 0.15
    # the same path lands on the same side whatever other files the install has
    for path in pycode.source_files(fake_stdlib):
        assert pycode.split_of(path) == pycode.split_of(path) == ("heldout" if path in heldout else "train")
    with pytest.raises(ValueError, match="split"):
        pycode.split_files("valid", files=files)


def test_file_set_hash_names_paths_and_contents_and_a_changed_set_warns(fake_stdlib):
    card = {"name": "pycode", "stdlib": pycode.data_info(fake_stdlib)}
    assert card["stdlib"]["files"] == 2 and len(card["stdlib"]["file_set_sha1"]) == 40
    assert pycode.data_warning(card, fake_stdlib) is None
    (fake_stdlib / "abc.py").write_text("x = 2\n")  # same paths, other text
    changed = pycode.data_warning(card, fake_stdlib)
    assert changed is not None and "split rule is the same" in changed
    (fake_stdlib / "abc.py").write_text("x = 1\n")
    assert pycode.data_warning(card, fake_stdlib) is None
    (fake_stdlib / "new.py").write_text("y = 0\n")  # another Python: one more file
    assert "3 files" in pycode.data_warning(card, fake_stdlib)
    assert pycode.data_warning({"name": "arith"}) is None  # not a pycode card


# ---- tokenizer -----------------------------------------------------------------------------------


def test_bpe_tokenizer_round_trips_code_exactly_and_loads_through_autotokenizer(tmp_path, files):
    from transformers import AutoTokenizer

    train = pycode.split_files("train", files=files)[:5]
    tok = pycode.train_tokenizer([pycode.read_source(f) for f in train], vocab_size=320)
    assert len(tok) == 320
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    texts = [pycode.read_source(pycode.split_files("heldout", files=files)[1])[:3000],
             "def f(x):\n\tif x:  \n        return 'héllo 日本'  # trailing  \n\n\n", "  a  ,b ."]
    for text in texts:
        ids = loaded(text)["input_ids"]
        assert ids[0] == loaded.bos_token_id == loaded.eos_token_id
        assert loaded.decode(ids, skip_special_tokens=True) == text
    # the same files give the same vocabulary: a resumed recipe retrains the tokenizer it had
    again = pycode.train_tokenizer([pycode.read_source(f) for f in train], vocab_size=320)
    assert again.get_vocab() == tok.get_vocab()


# ---- the recipe's data schedule ---------------------------------------------------------------------


def test_windows_are_a_pure_function_of_step_and_extend_to_the_long_context():
    cfg = recipes.RECIPES["pycode"]
    stream = torch.arange(20_000, dtype=torch.int32)
    long_from = cfg.steps - round(cfg.long_frac * cfg.steps)
    assert recipes.window_length(cfg, 0) == (cfg.batch_size, 512)
    assert recipes.window_length(cfg, long_from - 1)[1] == 512
    count, length = recipes.window_length(cfg, long_from)
    assert length == 2048 and count * length == cfg.batch_size * 512  # same tokens a step
    a, b = recipes.windows(stream, cfg, 7), recipes.windows(stream, cfg, 7)
    assert torch.equal(a, b) and not torch.equal(a, recipes.windows(stream, cfg, 8))
    assert bool((a[:, 1:] - a[:, :-1] == 1).all())  # contiguous slices of the stream


def test_the_recipes_are_sized_for_a_2048_context_and_a_few_mb():
    for name, cfg in recipes.RECIPES.items():
        assert cfg.long_context >= 2048 and 0 < cfg.long_frac < 0.5
        hidden, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
        params = cfg.vocab_size * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)
        assert params * 2 < 8e6, f"{name}: {params:,} parameters ship as {params * 2 / 1e6:.1f} MB"
    assert recipes.RECIPES["pycode-draft"].num_hidden_layers == 1


# ---- recipes end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    cards = {name: zoo.train(name, log=lambda line: None, out_dir=out, smoke=True)
             for name in ("pycode", "pycode-draft")}
    return out, cards


def test_smoke_recipes_write_real_formats_with_cards(smoke_zoo):
    out, cards = smoke_zoo
    for name in cards:
        folder = out / name
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
        assert not (folder / "checkpoint").exists()
        saved = json.loads((folder / "card.json").read_text())
        assert saved["reproduce"] == f"ponder zoo train {name}"
        assert saved["stdlib"]["python"] and len(saved["stdlib"]["file_set_sha1"]) == 40
        metrics = saved["metrics"]
        for ctx in (32, 64):  # the smoke contexts stand in for 512 and 2048
            assert metrics[f"heldout_loss_ctx{ctx}"] > 0 and metrics[f"heldout_ppl_ctx{ctx}"] > 1
        assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == 64
    assert 0.0 <= cards["pycode-draft"]["metrics"]["greedy_agreement_with_target"] <= 1.0
    assert cards["pycode-draft"]["target"] == "pycode"
    assert json.loads((out / "pycode-draft" / "config.json").read_text())["num_hidden_layers"] == 1


def test_smoke_models_load_through_the_user_path_and_speculate_losslessly(smoke_zoo):
    from ponder.kernels.sampling import SamplingParams
    from ponder.search.decoding import plain, speculative

    out, cards = smoke_zoo
    lm = ponder.load("text", out / "pycode")
    draft = ponder.load("text", out / "pycode-draft")
    assert lm.tokenizer.get_vocab() == draft.tokenizer.get_vocab()
    ids = [lm.encode("import os\n\ndef main(")]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(lm, ids, sampling=greedy, max_new_tokens=12)
    spec = speculative(lm, ids, sampling=greedy, max_new_tokens=12, draft=draft, draft_len=3)
    assert spec.tokens == ref.tokens
    # the card's cheap figure is what the loaded (shipped-dtype) weights give
    stream = recipes._corpus(lm.tokenizer, *recipes._files(smoke=True), smoke=True).heldout
    card = cards["pycode"]
    assert recipes.check_figure(lm.model, stream, card) == pytest.approx(card["metrics"]["check_loss"], abs=0.02)


def test_loading_a_card_measured_on_another_stdlib_warns(smoke_zoo, tmp_path):
    out, _ = smoke_zoo
    folder = tmp_path / "pycode"
    shutil.copytree(out / "pycode", folder)
    card = json.loads((folder / "card.json").read_text())
    card["stdlib"] = {**card["stdlib"], "python": "3.99.0 (elsewhere)", "file_set_sha1": "0" * 40}
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.warns(UserWarning, match="3.99.0"):
        lm = ponder.load("text", folder)
    assert "split rule is the same" in lm.card["warning"]


def test_bench_workload_is_held_out_file_prefixes_that_reencode_exactly(smoke_zoo):
    from ponder.bench.pycode_workload import pycode_workload
    from ponder.errors import ConfigError

    out, _ = smoke_zoo
    lm = ponder.load("text", out / "pycode")
    lm.card["context"] = 2048  # the smoke model's 64 positions stand in for the real 2048
    work = pycode_workload(lm, count=4, prompt_tokens=48, max_new_tokens=16)
    assert work.target == "zoo:pycode" and work.draft == "zoo:pycode-draft" and work.warning is None
    heldout = [pycode.read_source(f) for f in pycode.split_files("heldout")]
    assert len(work.prompts) == 4 and len(set(work.prompts)) == 4
    for prompt in work.prompts:
        ids = lm.encode(prompt)
        assert len(ids) <= 48 and lm.decode(ids) == prompt
        assert any(text.startswith(prompt) and len(text) > len(prompt) for text in heldout)
    with pytest.raises(ConfigError, match="context"):
        pycode_workload(lm, prompt_tokens=2000, max_new_tokens=100)


# ---- the shipped weights ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pycode", "pycode-draft"])
def test_shipped_weights_meet_their_card(name):
    entry = zoo.entry(name)
    if not entry.built:
        pytest.skip(f"zoo:{name} is not built (`ponder zoo train {name}`)")
    card = entry.card()
    if pycode.data_warning(card) is not None:
        pytest.skip("this Python's standard library differs from the card's; its figures do not apply")
    config = json.loads((entry.folder / "config.json").read_text())
    assert config["max_position_embeddings"] >= 2048
    assert (entry.folder / "model.safetensors").stat().st_size < 8e6
    metrics = card["metrics"]
    assert metrics["heldout_loss_ctx2048"] < metrics["heldout_loss_ctx512"]  # the long context is used
    lm = ponder.load("text", f"zoo:{name}")
    _, heldout = recipes._files(smoke=False)
    stream = pycode.token_stream(lm.tokenizer, [pycode.read_source(f) for f in heldout])
    assert recipes.check_figure(lm.model, stream, card) == pytest.approx(metrics["check_loss"], abs=0.02)
    if name == "pycode-draft":
        assert metrics["greedy_agreement_with_target"] > 0.5
