"""Layer-31 attention ablation "naked loop" (Mistral-7B-Instruct-v0.2): as published, its nulls, a
robustness check, controls on a calibrated repetition metric, and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/l31_ablation_repetition/claim.toml (a null's must not hold).
"""

from __future__ import annotations

import pytest

from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL
from harness.claimkit.gen import GenContext
from harness.claimkit.results import check, null_weights_result

from .protocols import PROTOCOLS, SCHEMA, as_published

pytestmark = pytest.mark.claim("l31_ablation_repetition", schema=SCHEMA)


@pytest.fixture(scope="module")
def generated():
    """Generations shared by this module's protocols (the same prompts, normal or ablated at one layer)."""
    return {}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_l31_ablation_repetition(protocol, lm, claim, prompt_bank, harness_options, record_claim, generated):
    ctx = GenContext(claim, lm, prompt_bank, harness_options.seed, harness_options.batch_size, cache=generated)
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    check(result)


@pytest.mark.parametrize("protocol", [NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim, prompt_bank, harness_options, record_claim):
    ctx = GenContext(claim, null_lm, prompt_bank, harness_options.seed, harness_options.batch_size)
    result = null_weights_result(as_published(ctx), lm, null_lm)
    record_claim(result)
    check(result)
