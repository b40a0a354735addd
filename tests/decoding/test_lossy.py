"""Lossy decoders (BiLD, Entropy Adaptive Decoding): each follows its stated rule token for token
(greedy, against a direct simulation of the rule on exact toy models), reduces to plain decoding at
its extreme setting, and is flagged lossy everywhere: the registry, `lossless=True` in
`ponder.generate` and `--lossless` on the CLI (one error, exit 2), and `result.config["lossy"]`."""

from __future__ import annotations

import pytest
import torch
from toys_decoding import ToyChain

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.decoding import LOSSY, is_lossy, plain
from ponder.search.decoding.bild import bild, rollback_rule
from ponder.search.decoding.ead import ead, entropy

GREEDY = SamplingParams(temperature=0.0)


def simulate(target, draft, prompt, new, draft_len, use_draft, keep):
    """The small/big rule written out directly: the small model writes while use_draft(q), at most
    draft_len tokens; the big model keeps its tokens while keep(p, token), then adds its own."""
    out = [int(target.next_logits(list(prompt)).argmax())]
    while len(out) < new:
        context, drafts = list(prompt) + out, []
        while len(drafts) < min(draft_len, new - len(out) - 1):
            q = draft.next_logits(context + drafts).softmax(-1)
            if not use_draft(q):
                break
            drafts.append(int(q.argmax()))
        kept = 0
        while kept < len(drafts) and keep(target.next_logits(context + drafts[:kept]).softmax(-1), drafts[kept]):
            kept += 1
        out += drafts[:kept] + [int(target.next_logits(context + drafts[:kept]).argmax())]
    return out[:new]


PROMPTS = [[0, 1], [2, 2, 1], [1, 0, 1, 0]]


def test_bild_follows_fallback_and_rollback_rules():
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    alpha, beta = 0.5, 2.0
    out = bild(target, PROMPTS, sampling=GREEDY, max_new_tokens=16, draft=draft, draft_len=5, fallback=alpha,
               rollback=beta)
    ref = plain(target, PROMPTS, sampling=GREEDY, max_new_tokens=16)
    expect = [simulate(target, draft, p, 16, 5, lambda q: float(q.max()) >= alpha,
                       lambda p, t: -float(p[t].log()) <= beta) for p in PROMPTS]
    assert out.tokens == expect
    assert out.tokens != ref.tokens  # the rule really departs from the big model's own greedy output


def test_bild_extremes_are_plain_decoding():
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    ref = plain(target, PROMPTS, sampling=GREEDY, max_new_tokens=12)
    for kw in ({"fallback": 1.0}, {"rollback": 0.0}):  # always fall back / roll back every small token
        assert bild(target, PROMPTS, sampling=GREEDY, max_new_tokens=12, draft=draft, **kw).tokens == ref.tokens


def test_bild_rollback_rule_by_hand():
    p = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]]])  # [1, 3, 3]
    # drafts 0 (−log 0.7 = 0.36) then 1 (−log 0.1 = 2.3): beta 1 keeps one, beta 3 keeps both
    for beta, kept in ((1.0, 1), (3.0, 2), (0.1, 0)):
        num, final = rollback_rule(beta)(p.log(), [[0, 1]], None, GREEDY, None)
        assert int(num[0]) == kept and int(final[0]) == int(p[0, kept].argmax())


def test_ead_follows_entropy_switch_rule():
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    h = 0.8
    out = ead(target, PROMPTS, sampling=GREEDY, max_new_tokens=16, draft=draft, draft_len=4, entropy_threshold=h)
    expect = [simulate(target, draft, p, 16, 4, lambda q: float(entropy(q[None])[0]) <= h, lambda p, t: True)
              for p in PROMPTS]
    assert out.tokens == expect
    assert out.tokens != plain(target, PROMPTS, sampling=GREEDY, max_new_tokens=16).tokens
    # h = 0: every position goes to the large model, i.e. plain decoding
    zero = ead(target, PROMPTS, sampling=GREEDY, max_new_tokens=12, draft=draft, entropy_threshold=0.0)
    assert zero.tokens == plain(target, PROMPTS, sampling=GREEDY, max_new_tokens=12).tokens


def test_lossy_decoders_are_flagged_in_the_registry():
    assert {"bild", "ead"} <= LOSSY
    assert is_lossy("bild") and is_lossy("ead") and not is_lossy("speculative") and not is_lossy("layer-skip")


def test_bad_options():
    target, draft = ToyChain(seed=0), ToyChain(seed=1)
    kw = dict(sampling=GREEDY, max_new_tokens=4)
    with pytest.raises(ConfigError, match="needs a small model"):
        bild(target, [[0]], **kw)
    with pytest.raises(ConfigError, match="fallback must be in"):
        bild(target, [[0]], draft=draft, fallback=0.0, **kw)
    with pytest.raises(ConfigError, match="rollback must be"):
        bild(target, [[0]], draft=draft, rollback=-1.0, **kw)
    with pytest.raises(ConfigError, match="entropy_threshold"):
        ead(target, [[0]], draft=draft, entropy_threshold=float("nan"), **kw)


# ---- the public surface: generate and the CLI ------------------------------------------------------


def test_generate_refuses_lossy_decoders_under_lossless(tiny_model_folders):
    import ponder

    llama = ponder.load("text", str(tiny_model_folders["llama"]))
    qwen2 = ponder.load("text", str(tiny_model_folders["qwen2"]))
    with pytest.raises(ConfigError, match="decoder 'bild' is lossy"):
        ponder.generate(qwen2, "Q: 1+2\n", decoder="bild", draft=llama, lossless=True, max_new_tokens=4)
    with pytest.raises(ConfigError, match="decoder 'medusa' with acceptance='typical' is lossy"):
        ponder.generate(qwen2, "Q: 1+2\n", decoder="medusa", acceptance="typical", lossless=True, max_new_tokens=4)
    res = ponder.generate(qwen2, "Q: 1+2\n", decoder="ead", draft=llama, max_new_tokens=4, temperature=0.0)
    assert res.config["lossy"] is True
    res = ponder.generate(qwen2, "Q: 1+2\n", decoder="speculative", draft=llama, lossless=True, max_new_tokens=4)
    assert res.config["lossy"] is False


def test_cli_lossless_with_a_lossy_decoder_is_one_error(tiny_model_folders, capsys):
    from ponder.cli import main

    folder = str(tiny_model_folders["llama"])
    code = main(["generate", "text", "--model", folder, "--prompt", "Q: 1+1\n", "--decoder", "bild", "--draft", folder,
                 "--lossless"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("ponder: error: decoder 'bild' is lossy")
    code = main(["generate", "text", "--model", folder, "--prompt", "Q: 1+1\n", "--decoder", "ead", "--draft", folder,
                 "--max-new-tokens", "4", "--json"])
    assert code == 0
