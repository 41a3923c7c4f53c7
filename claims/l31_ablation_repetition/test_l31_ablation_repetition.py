"""Layer-31 attention ablation "naked loop" (Mistral-7B-Instruct-v0.2): as published, its nulls, a
robustness check, controls on a calibrated repetition metric, and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/l31_ablation_repetition/claim.toml (a null's must not hold).
"""

from __future__ import annotations

import pytest

from harness import api
from harness.claimkit.gen import GenContext

from .protocols import PROTOCOLS, SCHEMA, as_published

pytestmark = pytest.mark.claim("l31_ablation_repetition", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_l31_ablation_repetition(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(GenContext)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    verify_claim(api.null_weights_result(as_published(claim_context(GenContext, null_lm)), lm, null_lm))
