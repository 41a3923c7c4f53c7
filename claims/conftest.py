"""Fixtures shared by the claim modules of one family of claims."""

from __future__ import annotations

import pytest

from harness.claimkit.role import RoleContext


@pytest.fixture(scope="module")
def measured():
    """Entropies measured by one claim module's protocols, shared so that each forward runs once per model."""
    return {}


@pytest.fixture
def role(lm, model_cache, claim, prompt_bank, harness_options, measured):
    """A role-conditioning context: the instruct model under test (`lm`) and its base from the model cache."""
    return RoleContext.for_instruct(claim, lm, model_cache.get, prompt_bank, harness_options.seed,
                                    harness_options.batch_size, measured)
