"""Core contracts: Compute sums, Result serialises to the --json shape, seeds are per candidate."""

import json

import torch

from ponder.search.core import Candidate, Compute, Result, candidate_generators, candidate_seed


def test_compute_adds_field_by_field():
    a = Compute(model_calls=2, tokens=5, seconds=0.5)
    b = Compute(model_calls=1, draft_calls=3, verifier_calls=4, nfe=7, seconds=0.25)
    a += b
    assert a == Compute(model_calls=3, draft_calls=3, tokens=5, nfe=7, verifier_calls=4, seconds=0.75)
    assert (Compute(tokens=1) + Compute(tokens=2)).tokens == 3


def test_result_to_dict_has_the_json_shape_and_serialises():
    cands = [Candidate(output="a", score=0.5, seed=7, meta={"ids": torch.tensor([1, 2])}),
             Candidate(output="b", score=None, seed=8)]
    res = Result(best=cands[0], candidates=cands, compute=Compute(tokens=3), config={"n": 2, "t": (1, 2)})
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d) == {"best", "candidates", "compute", "config"}
    assert d["best"] == {"output": "a", "score": 0.5, "seed": 7, "meta": {"ids": [1, 2]}}
    assert d["compute"]["tokens"] == 3 and d["config"]["t"] == [1, 2]
    assert Result(best=None, candidates=[], compute=Compute(), config={}).to_dict()["best"] is None


def test_candidate_generators_depend_only_on_seed_and_index():
    alone = candidate_generators(5, [3])[0]
    in_batch = candidate_generators(5, [0, 1, 2, 3])[3]
    assert torch.equal(torch.rand(4, generator=alone), torch.rand(4, generator=in_batch))
    assert candidate_seed(5, 3) != candidate_seed(5, 2) != candidate_seed(6, 2)


def test_timed_adds_wall_time():
    c = Compute()
    with c.timed():
        sum(range(10000))
    assert c.seconds > 0
