"""Fuzzed job files: every malformed file gets one clear error line, exit status 2, and writes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ponder.cli import main
from ponder.jobs.spec import ID_PATTERN, ITEM_FIELDS

VALID = {
    "name": "fuzz",
    "defaults": {"modality": "text", "model": "zoo:arith", "options": {"max_new_tokens": 8}},
    "matrix": {"seed": [0, 1]},
    "items": [{"id": "a", "prompt": "Q: 1+2\n", "strategy": "best-of-n", "n": 2, "verifier": "exact"},
              {"id": "b", "prompt": "Q: 3*4\n"}],
}
KNOWN_NAMES = {"sample", "best-of-n", "exact", "orm", "prm", "self", "ensemble", "text", "plain"}
junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=12).filter(lambda s: s not in KNOWN_NAMES)
not_positive_int = st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=5), st.booleans(),
                             st.lists(st.integers(), max_size=2))
bad_id = st.text(max_size=30).filter(lambda s: not ID_PATTERN.match(s) or s == "manifest.jsonl")

# (where, field, bad value): each replaces one value of VALID with one that can never be right
bad_field = st.one_of(
    st.tuples(st.just("item"), st.just("n"), not_positive_int),
    st.tuples(st.just("item"), st.just("seed"), st.one_of(st.floats(), st.text(max_size=5), st.booleans())),
    st.tuples(st.just("item"), st.just("strategy"), word),
    st.tuples(st.just("item"), st.just("decoder"), word),
    st.tuples(st.just("item"), st.just("verifier"), word),
    st.tuples(st.just("item"), st.just("modality"), word),
    st.tuples(st.just("item"), st.just("model"), word.map(lambda w: "zoo:" + w)),
    st.tuples(st.just("item"), st.just("prompt"), st.one_of(st.just(""), st.integers(), st.lists(st.text()))),
    st.tuples(st.just("item"), st.just("id"), bad_id),
    st.tuples(st.just("item"), st.just("options"), st.one_of(st.integers(), st.text(max_size=5), st.lists(junk))),
    st.tuples(st.just("option"), st.just("temperature"), st.one_of(st.floats(max_value=-0.001), st.text(max_size=3))),
    st.tuples(st.just("option"), st.just("top_p"), st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.001),
                                                             st.text(max_size=3))),
    st.tuples(st.just("option"), st.just("max_new_tokens"), not_positive_int),
    st.tuples(st.just("option"), word.map(lambda w: "zz_" + w), junk),
    st.tuples(st.just("item"), word.filter(lambda w: w not in (*ITEM_FIELDS, "id", "matrix")), junk),
    st.tuples(st.just("top"), word.filter(lambda w: w not in ("name", "defaults", "matrix", "items")), junk),
    st.tuples(st.just("top"), st.just("items"), st.one_of(st.just([]), st.integers(), st.text(max_size=5),
                                                          st.lists(st.integers(), min_size=1, max_size=3))),
    st.tuples(st.just("top"), st.just("matrix"), st.one_of(st.integers(), st.text(max_size=5),
                                                           st.just({"seed": []}), st.just({"id": [1]}))),
)


def _mutate(where: str, field: str, value) -> dict:
    job = json.loads(json.dumps(VALID))
    if where == "top":
        job[field] = value
    elif where == "item":
        job["items"][0][field] = value
    else:
        job["items"][0]["options"] = {field: value}
    return job


def _render(text: bytes, suffix: str = ".yaml") -> tuple[int, list[str], bool]:
    """(exit status, stderr lines, whether --out exists) of `ponder render` on a job file of `text`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"job{suffix}"
        path.write_bytes(text)
        out = Path(tmp) / "out"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["render", str(path), "--out", str(out), "--no-progress"])
        return code, err.getvalue().splitlines(), out.exists()


def _assert_rejected(text: bytes, suffix: str = ".yaml") -> None:
    code, err, wrote = _render(text, suffix)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("ponder: error: ") and len(err[0]) > 30, err
    assert not wrote


FUZZ = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def test_the_valid_base_job_is_accepted():
    # the dry run proves the base is valid, so each mutation below is what breaks it
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(yaml.safe_dump(VALID))
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["render", str(path), "--out", str(Path(tmp) / "out"), "--dry-run"]) == 0


@FUZZ
@given(bad_field)
def test_one_bad_field_gives_one_error_exit_2_and_no_output(mutation):
    _assert_rejected(yaml.safe_dump(_mutate(*mutation), allow_unicode=True).encode())


@FUZZ
@given(bad_field)
def test_one_bad_field_in_a_jsonl_job(mutation):
    job = _mutate(*mutation)
    if mutation[0] == "top":  # JSONL holds items only: send the bad value as an item field
        job = _mutate("item", mutation[1], mutation[2])
    items = [{**job["defaults"], **item, "options": {**job["defaults"]["options"], **item.get("options", {})}
              if isinstance(item.get("options", {}), dict) else item["options"]} for item in job["items"]]
    _assert_rejected("".join(json.dumps(item) + "\n" for item in items).encode(), suffix=".jsonl")


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_random_bytes_give_one_error_exit_2_and_no_output(data):
    try:
        parsed = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        parsed = None
    assume(not (isinstance(parsed, dict) and "items" in parsed))  # random text is never a whole job
    _assert_rejected(data)


@FUZZ
@given(st.recursive(junk, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                    max_leaves=12))
def test_random_structures_under_items_are_rejected(structure):
    _assert_rejected(yaml.safe_dump({"defaults": {"model": "zoo:arith"}, "items": structure}).encode())
