"""R_V contraction (Mistral-7B-Instruct-v0.2): as published, re-derived from the published table, under controls,
robustness checks and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criterion in claims/rv_contraction/claim.toml.
"""

from __future__ import annotations

import pytest

from harness import api
from harness.claimkit.rv import Context, as_published, rederive

from .protocols import PROTOCOLS, SCHEMA

pytestmark = pytest.mark.claim("rv_contraction", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rv_contraction(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(Context)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    verify_claim(api.null_weights_result(as_published(claim_context(Context, null_lm)), lm, null_lm))


def test_rederive(claim, published_data, verify_claim):
    verify_claim(rederive(claim, published_data))
