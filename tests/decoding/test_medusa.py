"""Medusa heads: rejection acceptance (chain and sparse tree) is lossless and greedy equals plain
greedy on real tiny models; typical acceptance follows its rule, is flagged lossy, and measurably
changes the distribution; the arith-medusa recipe runs end to end and loads through the user path."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from toys_decoding import ToyChain, chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.modalities.text.medusa import MedusaHeads
from ponder.search.core import candidate_generators
from ponder.search.decoding import is_lossy, plain
from ponder.search.decoding.medusa import medusa, typical_rule

SAMPLES = 3000
NEW = 3  # 27 outcomes


class ToyWithHidden(ToyChain):
    """ToyChain whose 'hidden state' at a position is the one-hot of the token fed there [B, T, V+1]."""

    box: dict | None = None

    @contextmanager
    def capturing_hidden(self):
        self.box = {}
        try:
            yield self.box
        finally:
            self.box = None

    def _grab(self, tokens: torch.Tensor) -> None:
        if self.box is not None:
            self.box["hidden"] = torch.nn.functional.one_hot(tokens, self.vocab + 1).float()  # [B, T, V+1]

    def prefill(self, prompt_ids, cache):
        width = max(len(p) for p in prompt_ids)
        self._grab(torch.tensor([[self.vocab] * (width - len(p)) + list(p) for p in prompt_ids]))
        return super().prefill(prompt_ids, cache)

    def forward(self, tokens, cache, attn_mask=None):
        self._grab(tokens.cpu())
        return super().forward(tokens, cache, attn_mask=attn_mask)


def random_heads(hidden: int, vocab: int, num_heads: int = 3, seed: int = 0, scale: float = 2.0) -> MedusaHeads:
    torch.manual_seed(seed)
    heads = MedusaHeads(hidden, vocab, num_heads)
    for param in heads.parameters():
        torch.nn.init.normal_(param, std=scale)
    return heads.eval()


def _pvalue(rule_kw, samples=SAMPLES, new=NEW):
    sampling = SamplingParams()
    target = ToyWithHidden(seed=0)
    prompt = [0, 1]
    stats: dict = {}
    out = medusa(target, [prompt] * samples, sampling=sampling, max_new_tokens=new, draft=random_heads(4, 3),
                 generators=candidate_generators(0, range(samples)), stats=stats, **rule_kw)
    counts = Counter(tuple(t) for t in out.tokens)
    return chi_square_pvalue(counts, target.exact_distribution(prompt, new, sampling), samples), stats


@pytest.mark.parametrize("kw", [{}, {"tree_width": 2}], ids=["chain", "tree"])
def test_rejection_acceptance_matches_target_distribution(kw):
    pvalue, stats = _pvalue(kw)
    assert stats["accepted"] > SAMPLES // 10  # the heads' drafts really were accepted
    assert pvalue > 1e-3


def test_typical_acceptance_is_lossy_and_flagged():
    # power check: the same test rejects typical acceptance (it accepts drafts p would rarely pick)
    pvalue, _ = _pvalue({"acceptance": "typical", "typical_epsilon": 0.2, "typical_delta": 0.2}, samples=4000, new=4)
    assert pvalue < 1e-6
    assert is_lossy("medusa", {"acceptance": "typical"}) and not is_lossy("medusa", {"acceptance": "rejection"})


def test_typical_rule_accepts_while_p_beats_the_entropy_bound():
    # two rows, drafts [0, 1, 2]; position probs chosen by hand (temperature 1)
    p = torch.tensor([[[0.7, 0.2, 0.1], [0.25, 0.5, 0.25], [0.05, 0.05, 0.9], [1 / 3, 1 / 3, 1 / 3]],
                      [[0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]])
    logits = p.log()
    drafts = [[0, 1, 2], [0, 1, 2]]
    entropy = -(p * p.log()).sum(-1)
    bound = torch.minimum(torch.tensor(0.3), 0.5 * torch.exp(-entropy))
    expect = []
    for row in range(2):
        n = 0
        while n < 3 and p[row, n, drafts[row][n]] > bound[row, n]:
            n += 1
        expect.append(n)
    assert expect == [3, 0]  # row 0 passes every bound, row 1's first draft (p = 0.1) fails
    num, final = typical_rule(0.3, 0.5)(logits, drafts, None, SamplingParams(), candidate_generators(0, [0, 1]))
    assert num.tolist() == expect and 0 <= int(final[0]) < 3


def test_toy_batch_rows_equal_single_rows():
    target = ToyWithHidden(seed=0)
    heads = random_heads(4, 3)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    for kw in ({}, {"tree_width": 2}):
        batch = medusa(target, prompts, sampling=SamplingParams(), max_new_tokens=12, draft=heads,
                       generators=candidate_generators(3, range(3)), **kw)
        for row, prompt in enumerate(prompts):
            alone = medusa(target, [prompt], sampling=SamplingParams(), max_new_tokens=12, draft=heads,
                           generators=candidate_generators(3, [row]), **kw)
            assert alone.tokens[0] == batch.tokens[row]


# ---- real (tiny random) transformers models --------------------------------------------------------

PROMPTS = ["Q: 1+2*3\n", "Q: 12-7+40*2-9\n", "R: 5*5\n"]


def test_greedy_equals_plain_greedy(tiny_folder):
    import ponder

    target = ponder.load("text", str(tiny_folder))
    heads = random_heads(32, len(target.tokenizer), num_heads=3, scale=0.3)
    heads.init_from_lm_head(target.model.get_output_embeddings().weight)  # drafts the target sometimes agrees with
    ids = [target.encode(p) for p in PROMPTS]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(target, ids, sampling=greedy, max_new_tokens=24)
    for kw in ({}, {"tree_width": 3}, {"acceptance": "typical"}, {"draft_len": 1}):
        out = medusa(target, ids, sampling=greedy, max_new_tokens=24, draft=heads, **kw)
        assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons, kw


def test_bad_input_errors(tiny_model_folders):
    import ponder

    target = ponder.load("text", str(tiny_model_folders["llama"]))
    ids = [target.encode("Q: 1+1\n")]
    kw = dict(sampling=SamplingParams(), max_new_tokens=4)
    heads = random_heads(32, len(target.tokenizer), num_heads=2)
    with pytest.raises(ConfigError, match="needs Medusa heads"):
        medusa(target, ids, **kw)
    with pytest.raises(ConfigError, match="hidden size 16"):
        medusa(target, ids, draft=random_heads(16, len(target.tokenizer)), **kw)
    with pytest.raises(ConfigError, match=r"draft_len for medusa must be an integer in \[1, 2\]"):
        medusa(target, ids, draft=heads, draft_len=3, **kw)
    with pytest.raises(ConfigError, match="acceptance must be one of"):
        medusa(target, ids, draft=heads, acceptance="greedy", **kw)
    with pytest.raises(ConfigError, match="typical acceptance verifies a chain"):
        medusa(target, ids, draft=heads, acceptance="typical", tree_width=2, **kw)


def test_recipe_smoke_trains_saves_and_decodes(tmp_path):
    import ponder
    from ponder import zoo

    zoo.train("arith", log=lambda line: None, out_dir=tmp_path, smoke=True)
    card = zoo.train("arith-medusa", log=lambda line: None, out_dir=tmp_path, smoke=True)
    folder = tmp_path / "arith-medusa"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "config.json", "model.safetensors"]
    assert card["reproduce"] == "ponder zoo train arith-medusa" and card["target"] == "arith"
    assert 0.0 <= card["metrics"]["head1_top1_agreement"] <= 1.0
    target = ponder.load("text", tmp_path / "arith")
    heads = ponder.load("text", folder)  # Medusa heads load through the user path too
    assert isinstance(heads, MedusaHeads) and heads.num_heads == 4
    res = ponder.generate(target, "Q: 1+2*3\n", decoder="medusa", draft=str(folder), temperature=0.0,
                          max_new_tokens=8)
    ref = ponder.generate(target, "Q: 1+2*3\n", temperature=0.0, max_new_tokens=8)
    assert res.best.output == ref.best.output


def test_the_shipped_medusa_heads_are_built_and_carded():
    import ponder
    from ponder import zoo

    entry = zoo.entry("arith-medusa")
    assert entry.built and entry.kind == "draft"
    card = entry.card()
    assert card["reproduce"] == "ponder zoo train arith-medusa" and card["metrics"]["head1_top1_agreement"] > 0.3
    heads = ponder.load("text", "zoo:arith-medusa")
    assert isinstance(heads, MedusaHeads) and heads.hidden_size == 384 and heads.num_heads == 4
