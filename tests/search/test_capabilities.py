"""Capabilities are protocols: what a model, cache, proposer or verifier offers is checked with
isinstance, and a model lacking one gets the one clear ConfigError naming what is missing."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from toys import FnVerifier, OutcomeOnly, ToyModel

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Named, ProcessVerifier, candidate_generators
from ponder.search.core.capabilities import (
    AnswerExtractor,
    HiddenStateModel,
    LayerSkippingModel,
    LengthChecked,
    MaskedModel,
    MedusaDraft,
    OnDevice,
    RowImageModel,
    RowRollbackCache,
    SteppedModel,
    TreeCache,
    VerifiedHook,
    device_of,
    display_name,
)
from ponder.search.decoding import get_decoder, jacobi, layer_skip, lookahead, medusa, plain, tree
from ponder.search.decoding.jacobi import JacobiWindow
from ponder.search.decoding.prompt_lookup import LookupProposer
from ponder.search.scaling import get_strategy
from ponder.search.scaling.common import answer_function, decoder_name
from ponder.search.scaling.steps import default_step_end
from ponder.search.verifiers import Ensemble, ProcessEnsemble, ensemble

sys.path.insert(0, str(Path(__file__).parents[1] / "decoding"))
from toys_decoding import HideOnlyCache, NoHideCache, ToyCache, ToyChain  # noqa: E402

GREEDY = dict(sampling=SamplingParams(temperature=0.0), max_new_tokens=4)
COUNT_A = FnVerifier(lambda text: text.count("a"), name="count_a")


class Bare:
    """Has nothing beyond what Python gives every object."""


def test_a_method_set_to_none_blocks_its_protocol():
    assert isinstance(ToyCache(), RowRollbackCache) and isinstance(ToyCache(), TreeCache)
    assert isinstance(HideOnlyCache(), RowRollbackCache) and not isinstance(HideOnlyCache(), TreeCache)
    assert not isinstance(NoHideCache(), RowRollbackCache) and not isinstance(NoHideCache(), TreeCache)


def test_proposers_that_read_the_verify_pass_say_so():
    window = JacobiWindow(vocab=3, sampling=SamplingParams(temperature=0.0), generators=None, draft_len=2,
                          init="random", row_tokens=None)
    assert isinstance(window, VerifiedHook)
    assert not isinstance(LookupProposer([[0]], draft_len=2, max_ngram=2), VerifiedHook)


def test_models_offer_what_search_reads_from_them():
    toy = ToyModel([[0.5, 0.5, 0.0]] * 4)
    assert isinstance(toy, SteppedModel) and isinstance(toy, AnswerExtractor) and isinstance(toy, Named)
    assert not isinstance(toy, LengthChecked) and not isinstance(toy, OnDevice)
    for protocol in (SteppedModel, AnswerExtractor, LengthChecked, LayerSkippingModel, HiddenStateModel,
                     MedusaDraft, RowImageModel, Named, OnDevice):
        assert not isinstance(Bare(), protocol)


def test_display_name_and_device_of_fall_back_for_objects_without_them():
    assert display_name(ToyChain(seed=3)) == "toy3"
    assert display_name(Bare()) == "model" and display_name(None, None) is None
    assert device_of(Bare()) is None
    on_cpu = Bare()
    on_cpu.device = torch.device("cpu")
    assert device_of(on_cpu) == torch.device("cpu")


def test_decoder_name_is_the_registry_name_or_the_function_name():
    assert decoder_name("speculative") == "speculative"
    assert decoder_name(plain) == "plain"
    assert decoder_name(lambda *a, **k: None) == "<lambda>"
    assert decoder_name(Bare()) == "custom"


# ---- a model lacking a capability gets one clear ConfigError ------------------------------------------


def test_layer_skip_needs_a_layer_skipping_model():
    with pytest.raises(ConfigError, match="decoder 'layer-skip' needs a model with at least 3 decoder layers .*'toy0'"):
        layer_skip(ToyChain(seed=0), [[0, 1]], **GREEDY)

    class Shallow(ToyChain):
        num_layers = 2

        def skipping_layers(self, skip):
            return nullcontext()

    assert isinstance(Shallow(), LayerSkippingModel)
    with pytest.raises(ConfigError, match="at least 3 decoder layers"):
        layer_skip(Shallow(), [[0, 1]], **GREEDY)


def test_medusa_needs_heads_and_a_target_that_exposes_hidden_states():
    with pytest.raises(ConfigError, match="decoder 'medusa' needs Medusa heads .* got 'toy1'"):
        medusa(ToyChain(seed=0), [[0, 1]], draft=ToyChain(seed=1), **GREEDY)

    class Heads:
        num_heads, hidden_size = 2, 4

        def head_logits(self, hidden):
            return torch.zeros((hidden.shape[0], 2, 3))

    assert isinstance(Heads(), MedusaDraft)
    with pytest.raises(ConfigError, match="reads the target's hidden states; 'toy0' cannot expose them"):
        medusa(ToyChain(seed=0), [[0, 1]], draft=Heads(), **GREEDY)


def test_horizon_init_needs_image_rows():
    with pytest.raises(ConfigError, match="'toy0' has no image rows"):
        jacobi(ToyChain(seed=0), [[0, 1]], init="horizon", **GREEDY)
    rows = ToyChain(seed=0)
    rows.row_tokens = 2
    assert isinstance(rows, RowImageModel)
    assert len(jacobi(rows, [[0, 1]], init="horizon", **GREEDY).tokens[0]) == 4


@pytest.mark.parametrize("decoder", [lookahead, tree])
def test_tree_decoders_need_a_cache_that_compacts_or_hides(decoder):
    draft = {"draft": ToyChain(seed=1)} if decoder is tree else {}
    with pytest.raises(ConfigError, match="need a cache with select_positions or hide; 'toy0' has neither"):
        decoder(ToyChain(seed=0, per_row_holes=False), [[0, 1]], **GREEDY, **draft)


def test_step_search_and_voting_need_steps_answers_and_a_process_verifier():
    with pytest.raises(ConfigError, match="Bare does not define steps"):
        default_step_end(Bare())
    with pytest.raises(ConfigError, match="Bare has no extract_answer"):
        answer_function(Bare())
    toy = ToyModel([[0.5, 0.5, 0.0]] * 4)
    assert answer_function(toy)("ab") == 1 and answer_function(toy, len)("ab") == 2
    assert isinstance(COUNT_A, ProcessVerifier) and not isinstance(OutcomeOnly(), ProcessVerifier)
    with pytest.raises(ConfigError, match="needs a process verifier .*'outcome' only scores finished outputs"):
        get_strategy("beam")(toy, "p", OutcomeOnly(), n=4, max_new_tokens=2)


def test_an_ensemble_is_a_process_verifier_only_when_every_member_is():
    assert isinstance(ensemble([COUNT_A, COUNT_A]), ProcessEnsemble)
    mixed = ensemble([COUNT_A, OutcomeOnly()])
    assert type(mixed) is Ensemble and not isinstance(mixed, ProcessVerifier)
    assert mixed.name == "count_a+outcome"


def test_a_forwarding_proxy_still_decodes():
    # wrappers such as the bench's no-EOS proxy forward everything through __getattr__
    class Proxy:
        def __init__(self, model):
            self._model = model
            self.eos_token_ids = frozenset()

        def __getattr__(self, name):
            return getattr(self._model, name)

    toy = ToyChain(seed=0, eos=2)
    kw = dict(sampling=SamplingParams(temperature=0.0), max_new_tokens=6, generators=candidate_generators(0, range(2)))
    out = plain(Proxy(toy), [[0, 1], [2]], **kw)
    assert [len(t) for t in out.tokens] == [6, 6]  # no EOS through the proxy
    assert get_decoder("prompt-lookup")(Proxy(toy), [[0, 1], [2]], **kw).tokens == out.tokens
    assert plain(toy, [[0, 1], [2]], **kw).tokens != out.tokens  # the real model stops at its EOS


# ---- the masked-model protocol ------------------------------------------------------------------------


class ToyMasked:
    """Logits that favour token (position mod V) at every masked position, whatever the condition."""

    mask_token_id = 3

    def condition(self, prompt):
        return len(prompt)

    def masked_logits(self, tokens, mask, cond):
        batch, length = tokens.shape
        favoured = torch.arange(length) % 3  # [L]
        return torch.nn.functional.one_hot(favoured, 3).float().expand(batch, length, 3) * 4.0  # [B, L, V]

    def decode(self, ids):
        return list(ids)


def test_masked_model_protocol_lists_what_masked_decoders_read():
    model = ToyMasked()
    assert isinstance(model, MaskedModel)
    tokens = torch.full((2, 5), model.mask_token_id)  # [B, L], fully masked
    logits = model.masked_logits(tokens, tokens == model.mask_token_id, model.condition("p"))
    assert logits.shape == (2, 5, 3)
    assert model.decode(logits.argmax(-1)[0].tolist()) == [0, 1, 2, 0, 1]

    class NoLogits(ToyMasked):
        masked_logits = None

    assert not isinstance(NoLogits(), MaskedModel)
    assert not isinstance(ToyChain(seed=0), MaskedModel)
