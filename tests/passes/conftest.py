"""Fixtures shared by the structural pass tests."""

from __future__ import annotations

import pytest

from optc.tests.conftest import token_inputs
from optc.tests.frontends.hf_cases import captured


@pytest.fixture(scope="module")
def bert():
    """(model, captured module, padded inputs) of the tiny BERT; clone the module to mutate."""
    model, module = captured("bert")
    return model, module, token_inputs(model, 3, 7)
