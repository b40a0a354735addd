"""Chimera draft: training's unrolled passes draft exactly what decoding drafts; the chain and the sparse
tree are lossless (chi-square on an exact toy chain, greedy equals plain greedy on tiny real models);
batch rows equal single rows; bad options are one clear error; the arith-chimera recipe runs end to end
and loads through the user path; the shipped draft meets its card."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from test_medusa import ToyWithHidden, random_heads
from toys_decoding import chi_square_pvalue

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.modalities.text.chimera import ChimeraDraft
from ponder.search.core import candidate_generators
from ponder.search.decoding import DECODERS, is_lossy, plain
from ponder.search.decoding.chimera import chimera

SAMPLES = 3000
NEW = 3  # 27 outcomes


def random_draft(hidden: int, vocab: int, seed: int = 0, scale: float = 0.5, width: int = 8) -> ChimeraDraft:
    torch.manual_seed(seed)
    draft = ChimeraDraft(hidden, vocab, width=width, num_heads=2, intermediate_size=12)
    with torch.no_grad():
        for param in draft.parameters():
            param.normal_(std=scale)
    return draft.eval()


def repeating_draft(target, noise: float = 0.02) -> ChimeraDraft:
    """A draft that mostly proposes the target's own current prediction again (accepted whenever the target
    repeats a token, as tiny random models often do): the state passes through, the LM head is the target's."""
    vocab, hidden = target.model.get_output_embeddings().weight.shape
    draft = random_draft(hidden, vocab, scale=noise, width=hidden)
    with torch.no_grad():
        draft.feature_in.weight.copy_(torch.eye(hidden) + noise * torch.randn(hidden, hidden))
        draft.feature_out.weight.copy_(torch.eye(hidden))
        draft.feature_out.bias.zero_()
        draft.lm_head.weight.copy_(target.model.get_output_embeddings().weight)
    return draft


def test_training_passes_draft_exactly_what_decoding_drafts():
    draft = random_draft(6, 5)
    hidden, tokens = torch.randn(2, 10, 6), torch.randint(0, 5, (2, 10))
    depth = 3
    with torch.no_grad():
        passes = draft.unrolled(hidden, tokens, depth)
    for c in range(0, 10 - depth):
        # rows 0 and 1 start drafting from different positions in one batched call
        cs = [c, max(0, c - 2)]
        state = draft.begin(tokens[:, 0].tolist())
        width = max(cs) + 1
        feed = torch.zeros(2, width, 6)
        after = torch.zeros(2, width, dtype=torch.long)
        for row, start in enumerate(cs):
            feed[row, :start + 1] = hidden[row, :start + 1]
            after[row, :start + 1] = tokens[row, 1:start + 2]
        logits, predicted = draft.extend(state, feed, after, [s + 1 for s in cs])
        for k in range(1, depth + 1):
            for row, start in enumerate(cs):
                torch.testing.assert_close(logits[row], passes[k - 1][0][row, start + k - 1], atol=1e-5, rtol=1e-4)
            if k == depth:
                break
            nxt = torch.stack([tokens[row, start + k + 1] for row, start in enumerate(cs)])[:, None]
            logits, predicted = draft.extend(state, predicted[:, None], nxt, [1, 1])
        draft.rollback(state, [s + 1 for s in cs])
        assert state.lengths.tolist() == [s + 1 for s in cs]


def _pvalue(kw, samples=SAMPLES, new=NEW):
    sampling = SamplingParams()
    target = ToyWithHidden(seed=0)
    prompt = [0, 1]
    stats: dict = {}
    out = chimera(target, [prompt] * samples, sampling=sampling, max_new_tokens=new,
                  draft=random_draft(4, 3, scale=1.0), generators=candidate_generators(0, range(samples)),
                  stats=stats, **kw)
    counts = Counter(tuple(t) for t in out.tokens)
    return chi_square_pvalue(counts, target.exact_distribution(prompt, new, sampling), samples), stats


@pytest.mark.parametrize("kw", [{}, {"tree_width": 2}], ids=["chain", "tree"])
def test_chimera_matches_the_target_distribution(kw):
    pvalue, stats = _pvalue(kw)
    assert stats["accepted"] > SAMPLES // 10  # the draft's tokens really were accepted
    assert pvalue > 1e-3
    assert not is_lossy("chimera") and DECODERS["chimera"] is chimera


def test_toy_batch_rows_equal_single_rows():
    target = ToyWithHidden(seed=0)
    draft = random_draft(4, 3, scale=1.0)
    prompts = [[0, 1, 2, 0, 1], [2, 2], [1, 0, 1, 0, 1, 0]]
    for kw in ({}, {"tree_width": 2}, {"draft_len": 2}):
        batch = chimera(target, prompts, sampling=SamplingParams(), max_new_tokens=12, draft=draft,
                        generators=candidate_generators(3, range(3)), **kw)
        for row, prompt in enumerate(prompts):
            alone = chimera(target, [prompt], sampling=SamplingParams(), max_new_tokens=12, draft=draft,
                            generators=candidate_generators(3, [row]), **kw)
            assert alone.tokens[0] == batch.tokens[row], (kw, row)


# ---- real (tiny random) transformers models --------------------------------------------------------

PROMPTS = ["Q: 1+2*3\n", "Q: 12-7+40*2-9\n", "R: 5*5\n"]


def test_greedy_equals_plain_greedy(tiny_folder):
    import ponder

    target = ponder.load("text", str(tiny_folder))
    draft = repeating_draft(target)
    ids = [target.encode(p) for p in PROMPTS]
    greedy = SamplingParams(temperature=0.0)
    ref = plain(target, ids, sampling=greedy, max_new_tokens=24)
    for kw in ({}, {"tree_width": 3}, {"draft_len": 1}, {"draft_len": 7, "tree_width": 2}):
        stats: dict = {}
        out = chimera(target, ids, sampling=greedy, max_new_tokens=24, draft=draft, stats=stats, **kw)
        assert out.tokens == ref.tokens and out.stop_reasons == ref.stop_reasons, kw
        assert stats["accepted"] > 0, kw  # the verify path with accepted drafts was exercised
        for row in range(len(ids)):
            assert out.logprobs[row] == pytest.approx(ref.logprobs[row], abs=1e-4)


def test_bad_input_errors(tiny_model_folders):
    import ponder

    target = ponder.load("text", str(tiny_model_folders["llama"]))
    ids = [target.encode("Q: 1+1\n")]
    kw = dict(sampling=SamplingParams(), max_new_tokens=4)
    draft = random_draft(32, len(target.tokenizer))
    with pytest.raises(ConfigError, match="decoder 'chimera' needs a Chimera draft"):
        chimera(target, ids, **kw)
    with pytest.raises(ConfigError, match="needs a Chimera draft"):
        chimera(target, ids, draft=random_heads(32, len(target.tokenizer)), **kw)  # Medusa heads are not one
    with pytest.raises(ConfigError, match="reads hidden size 16, but"):
        chimera(target, ids, draft=random_draft(16, len(target.tokenizer)), **kw)
    with pytest.raises(ConfigError, match=r"draft_len must be a positive integer .* got 0"):
        chimera(target, ids, draft=draft, draft_len=0, **kw)
    with pytest.raises(ConfigError, match="tree_width"):
        chimera(target, ids, draft=draft, tree_width=0, **kw)
    with pytest.raises(ConfigError, match="cannot expose them"):
        chimera(object(), ids, draft=draft, **kw)


# ---- the recipe and the shipped draft -------------------------------------------------------------------


def test_recipe_smoke_trains_saves_and_decodes(tmp_path):
    import ponder
    from ponder import zoo
    from ponder.modalities.text import train_chimera

    zoo.train("arith", log=lambda line: None, out_dir=tmp_path, smoke=True)
    logs: list[str] = []
    card = zoo.train("arith-chimera", log=logs.append, out_dir=tmp_path, smoke=True)
    folder = tmp_path / "arith-chimera"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "config.json", "model.safetensors"]
    assert card["reproduce"] == "ponder zoo train arith-chimera" and card["target"] == "arith"
    metrics = card["metrics"]
    assert 0.0 <= metrics["depth1_top1_agreement"] <= 1.0 and metrics["chain_tokens_per_target_call"] >= 1.0
    assert metrics["draft_len"] == 5 and metrics["tree_tokens_per_target_call"] >= 1.0
    draft = ponder.load("text", folder)  # the draft loads through the user path
    assert isinstance(draft, ChimeraDraft) and draft.hidden_size == 32
    target = ponder.load("text", tmp_path / "arith")
    for options in ({}, {"tree_width": 2}):
        res = ponder.generate(target, "Q: 1+2*3\n", decoder="chimera", draft=str(folder), temperature=0.0,
                              max_new_tokens=8, **options)
        ref = ponder.generate(target, "Q: 1+2*3\n", temperature=0.0, max_new_tokens=8)
        assert res.best.output == ref.best.output
    # a killed run keeps its distillation set beside the checkpoint, and a resumed run reuses it
    cfg = train_chimera.ChimeraConfig(**{**train_chimera.asdict(train_chimera.ChimeraConfig()), **train_chimera.SMOKE})
    hf_target, tokenizer = train_chimera._load_target(tmp_path / "arith")
    acfg = train_chimera.arith.ArithConfig(**cfg.arith)
    first = train_chimera.distillation_set(hf_target, tokenizer, cfg, acfg, tmp_path / "data.pt", logs.append)
    again = train_chimera.distillation_set(hf_target, tokenizer, cfg, acfg, tmp_path / "data.pt", logs.append)
    assert torch.equal(first["ids"], again["ids"]) and "reusing" in logs[-1]


def _shipped():
    import ponder
    from ponder import zoo

    entry = zoo.entry("arith-chimera")
    assert entry.built and entry.kind == "draft"
    return entry, ponder.load("text", "zoo:arith"), ponder.load("text", "zoo:arith-chimera")


def _measure(target, draft, prompts, tree_width: int, max_new_tokens: int) -> tuple[float, bool]:
    greedy = SamplingParams(temperature=0.0)
    tokens = calls = 0
    lossless = True
    for prompt in prompts:
        ids = [target.encode(prompt)]
        out = chimera(target, ids, sampling=greedy, max_new_tokens=max_new_tokens, draft=draft, draft_len=5,
                      tree_width=tree_width)
        tokens += len(out.tokens[0])
        calls += out.compute.model_calls
        lossless &= out.tokens == plain(target, ids, sampling=greedy, max_new_tokens=max_new_tokens).tokens
    return tokens / calls, lossless


def test_the_shipped_chimera_draft_is_built_carded_and_fits_its_target():
    from ponder import zoo
    from ponder.modalities.text.train_chimera import file_sha256

    entry, target, draft = _shipped()
    card = entry.card()
    assert card["reproduce"] == "ponder zoo train arith-chimera"
    assert card["target_weights_sha256"] == file_sha256(zoo.entry("arith").folder / "model.safetensors"), \
        "zoo:arith was retrained: rebuild the draft with `ponder zoo train arith-chimera`"
    assert isinstance(draft, ChimeraDraft) and draft.hidden_size == 384
    metrics = card["metrics"]
    assert metrics["eval_problems"] >= 100 and metrics["draft_len"] == 5 and metrics["batch"] == 1
    # a quick re-measure on the card's first 8 problems (the slow test below redoes all of them)
    from ponder.modalities.text import arith
    from ponder.modalities.text.train_chimera import heldout_prompts

    acfg = arith.ArithConfig(**card["recipe"]["arith"])
    prompts = heldout_prompts(8, card["recipe"]["seed"], acfg)
    per_call, lossless = _measure(target, draft, prompts, 1, metrics["max_new_tokens"])
    assert lossless and per_call >= metrics["chain_tokens_per_target_call"] - 0.5


@pytest.mark.slow
def test_the_shipped_chimera_draft_meets_its_card_figures():
    from ponder.modalities.text import arith
    from ponder.modalities.text.train_chimera import heldout_prompts

    entry, target, draft = _shipped()
    card = entry.card()
    metrics = card["metrics"]
    acfg = arith.ArithConfig(**card["recipe"]["arith"])
    prompts = heldout_prompts(metrics["eval_problems"], card["recipe"]["seed"], acfg)
    for label, width in (("chain", 1), ("tree", metrics["tree_width"])):
        per_call, lossless = _measure(target, draft, prompts, width, metrics["max_new_tokens"])
        assert lossless
        assert per_call == pytest.approx(metrics[f"{label}_tokens_per_target_call"], abs=0.02), label
    # the per-depth agreement, on the card's own held-out problems and the target's greedy completions
    from ponder.modalities.text import train_chimera as recipe

    recipe_cfg = card["recipe"]
    agreement_prompts = heldout_prompts(metrics["agreement_problems"], recipe_cfg["seed"] + 1, acfg, template=None)
    completions = recipe.greedy_completions(target.model, target.tokenizer, agreement_prompts,
                                            max_new_tokens=recipe_cfg["max_new_tokens"])
    states = recipe.target_states(target.model, target.tokenizer, list(zip(agreement_prompts, completions)))
    agreement = recipe.depth_agreement(draft, states, recipe_cfg["depth"])
    for key, value in agreement.items():
        assert value == pytest.approx(metrics[key], abs=0.011), key
