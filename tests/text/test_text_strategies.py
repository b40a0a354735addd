"""Scaling strategies on real text models: the CLI and Python surfaces, verifier names, answers,
steps, and one clear error (exit 2) for each kind of bad strategy input."""

import json

import pytest

import ponder
from ponder.cli import main
from ponder.errors import ConfigError
from ponder.modalities.text.answers import extract_answer
from ponder.search.verifiers import Ensemble, ProcessEnsemble, SelfEvaluation


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def lm(tiny_model_folders):
    return ponder.load("text", tiny_model_folders["llama"])


@pytest.mark.parametrize("text, answer", [
    ("7*2=14\n58+36=94\n94-14=80\nA: 80\n", "80"),
    ("so the answer is 1,000.", "1000"),
    ("\\boxed{42} then 7", "42"),
    ("x = 3.0\nFinal answer: 3", "3"),
    ("Answer: yes", "yes"),
    ("A: -7", "-7"),
    ("no number here", None),
    ("", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_steps_are_lines(lm):
    ids = lambda s: lm.encode(s)[1:]  # noqa: E731 — drop BOS
    assert not lm.is_step_end(ids("48*2=9"))
    assert lm.is_step_end(ids("48*2=96\n"))
    assert not lm.is_step_end(ids("\n\n"))  # blank lines are not a step
    assert lm.is_step_end(ids("\n12\n"))


@pytest.mark.parametrize("strategy, extra", [
    ("best-of-n", {}), ("weighted-best-of-n", {}), ("worst-of-n", {}), ("self-consistency", {}), ("rpc", {}),
    ("beam", {"beam_width": 2}), ("dvts", {"beam_width": 2}), ("diverse-beam", {"beam_width": 2, "groups": 2}),
    ("particles", {"gibbs_iterations": 2}), ("compute-optimal", {"probe": 2, "beam_width": 2}),
    ("adaptive", {"confidence": 0.99}),
])
def test_every_strategy_runs_on_a_real_model_and_reproduces(lm, strategy, extra):
    kw = dict(strategy=strategy, n=8 if strategy == "diverse-beam" else 4, verifier="self", seed=3,
              max_new_tokens=8, **extra)
    a = ponder.generate(lm, "Q: 1+2\n", **kw)
    b = ponder.generate(lm, "Q: 1+2\n", **kw)
    assert [c.output for c in a.candidates] == [c.output for c in b.candidates]
    assert a.best is not None and a.best.output in [c.output for c in a.candidates]
    assert a.config["strategy"] == strategy and a.compute.tokens > 0 and a.compute.seconds > 0
    assert all(c.meta["num_tokens"] <= 8 for c in a.candidates)
    json.dumps(a.to_dict())


def test_step_strategies_respect_stop_strings(lm):
    res = ponder.generate(lm, "Q: 1+2\n", strategy="beam", n=4, beam_width=2, verifier="self", seed=0,
                          max_new_tokens=12, stop=["1"])
    for c in res.candidates:
        assert c.output.count("1") <= 1 and (not c.output or "1" not in c.output[:-1])


def test_verifier_names(lm):
    assert isinstance(ponder.load_verifier("text", "self", model=lm), SelfEvaluation)
    both = ponder.load_verifier("text", "ensemble")  # orm + prm: the orm scores only finished outputs
    assert type(both) is Ensemble and both.name == "ensemble" and len(both.verifiers) == 2
    process = ponder.load_verifier("text", "prm,self", model=lm)
    assert isinstance(process, ProcessEnsemble) and process.name == "prm,self"
    with pytest.raises(ConfigError, match="model="):
        ponder.load_verifier("text", "self")
    with pytest.raises(ConfigError, match="self, ensemble"):
        ponder.load_verifier("text", "nope")


def test_calibrated_generation(lm):
    res = ponder.generate(lm, "Q: 1+2\n", strategy="best-of-n", n=3, verifier="self", calibrate=4, seed=0,
                          max_new_tokens=6)
    assert res.config["verifier"] == "calibrated-self"
    assert all(0.0 <= c.score <= 1.0 for c in res.candidates)
    with pytest.raises(ConfigError, match="calibrate"):
        ponder.generate(lm, "Q: 1\n", strategy="best-of-n", n=2, verifier="self", calibrate=0)


def test_unknown_strategy_option_names_the_allowed_ones(lm):
    with pytest.raises(ConfigError, match="beam_width") as err:
        ponder.generate(lm, "Q: 1\n", strategy="particles", n=2, verifier="self", beam_width=2)
    assert "weight_temperature" in str(err.value)


def test_cli_strategy_flags_and_json(capsys, tiny_model_folders):
    code, out, _ = _run(capsys, "generate", "text", "--model", str(tiny_model_folders["llama"]), "--prompt", "Q: 1\n",
                        "--strategy", "particles", "--n", "4", "--verifier", "self", "--weight-temperature", "0.5",
                        "--resampling", "multinomial", "--ess-threshold", "1", "--max-new-tokens", "6", "--json",
                        "--option", "select=vote")
    assert code == 0
    res = json.loads(out)
    cfg = res["config"]
    assert cfg["strategy"] == "particles" and cfg["weight_temperature"] == 0.5 and cfg["select"] == "vote"
    assert cfg["resampling"] == "multinomial" and len(res["candidates"]) == 4


@pytest.mark.parametrize("argv, needle", [
    (["--strategy", "beam", "--verifier", "self", "--n", "6", "--beam-width", "4"], "multiple of beam_width"),
    (["--strategy", "beam", "--verifier", "exact", "--n", "4"], "process verifier"),
    (["--strategy", "particles", "--verifier", "orm", "--n", "4"], "process verifier"),
    (["--strategy", "particles", "--verifier", "self", "--n", "4", "--weight-temperature", "0"], "weight_temperature"),
    (["--strategy", "particles", "--verifier", "self", "--n", "4", "--weight-temperature", "-1"],
     "weight_temperature"),
    (["--strategy", "compute-optimal", "--verifier", "self", "--n", "4", "--probe", "4"], "must exceed probe"),
    (["--strategy", "beam", "--verifier", "self", "--n", "2", "--beam-width", "4"], "smaller than beam_width"),
    (["--strategy", "best-of-n", "--n", "2"], "verifier"),
    (["--strategy", "sample", "--beam-width", "2"], "beam_width"),
    (["--strategy", "beam", "--verifier", "self", "--n", "4", "--option", "nonsense"], "KEY=VALUE"),
])
def test_bad_strategy_input_exits_2_with_one_line(capsys, tiny_model_folders, argv, needle):
    code, out, err = _run(capsys, "generate", "text", "--model", str(tiny_model_folders["llama"]), "--prompt",
                          "Q: 1\n", "--max-new-tokens", "4", *argv)
    assert code == 2 and out == "", err
    assert err.startswith("ponder: error:") and needle in err and err.count("\n") == 1
