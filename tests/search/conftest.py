"""Fixtures over the toy models of `toys.py`."""

import pytest
from toys import NO_EOS, WITH_EOS, ToyModel


@pytest.fixture
def toy():
    return ToyModel(NO_EOS)


@pytest.fixture
def toy_eos():
    return ToyModel(WITH_EOS)
