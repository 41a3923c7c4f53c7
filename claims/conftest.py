"""Fixtures shared by the claim modules of one family of claims."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.claimkit.role import RoleContext
from harness.engine.models import LoadedModel
from harness.plugin.fixtures import ModelCache, protocol_dtype


def _loader(model_cache: ModelCache, claim, harness_options, twins: bool = False) -> Callable[[str], LoadedModel]:
    """The model cache's loader in the claim's protocol dtype (of the model's null-weights twin with `twins`)."""
    def load(model_id: str) -> LoadedModel:
        dtype = protocol_dtype(claim, harness_options.registry[model_id])
        lm = model_cache.get(model_id, dtype)
        return model_cache.null_twin(lm, dtype) if twins else lm
    return load


@pytest.fixture
def role(lm, model_cache, claim, prompt_bank, harness_options, claim_cache):
    """A role-conditioning context: the instruct model under test (`lm`) and its base from the model cache; the
    module's protocols share their entropies (`claim_cache`), so each forward runs once per model."""
    return RoleContext.for_instruct(claim, lm, _loader(model_cache, claim, harness_options), prompt_bank,
                                    harness_options.seed, harness_options.batch_size, claim_cache)


@pytest.fixture
def null_role(null_lm, model_cache, claim, prompt_bank, harness_options):
    """The null-weights check's role context: random-weight twins of the instruct model and of its base, with
    a cache of its own (a twin shares its model's id)."""
    return RoleContext.for_instruct(claim, null_lm, _loader(model_cache, claim, harness_options, twins=True),
                                    prompt_bank, harness_options.seed, harness_options.batch_size, {})
