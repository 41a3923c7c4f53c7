"""R_V contraction (Mistral-7B-Instruct-v0.2): as published, re-derived from the published table, under controls,
robustness checks and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criterion in claims/rv_contraction/claim.toml.
"""

from __future__ import annotations

import pytest

from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL
from harness.claimkit.results import check, null_weights_result
from harness.claimkit.rv import Context, as_published, rederive

from .protocols import PROTOCOLS, SCHEMA

pytestmark = pytest.mark.claim("rv_contraction", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rv_contraction(protocol, lm, claim, prompt_bank, harness_options, record_claim):
    ctx = Context(claim, lm, prompt_bank, harness_options.seed, harness_options.batch_size)
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    check(result)


@pytest.mark.parametrize("protocol", [NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim, prompt_bank, harness_options, record_claim):
    ctx = Context(claim, null_lm, prompt_bank, harness_options.seed, harness_options.batch_size)
    result = null_weights_result(as_published(ctx), lm, null_lm)
    record_claim(result)
    check(result)


def test_rederive(claim, published_data, record_claim):
    result = rederive(claim, published_data)
    record_claim(result)
    check(result)
