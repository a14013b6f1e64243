"""The embedded tiny LM and its tokenizer, loaded once for the attack tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_lm():
    from repulse.assets import TINY_LM_DIR
    from repulse.models.load import load_scoring_lm, load_tokenizer

    return load_scoring_lm(str(TINY_LM_DIR)), load_tokenizer(str(TINY_LM_DIR))


GOAL, TARGET = "Our guy was very", " shitty"
