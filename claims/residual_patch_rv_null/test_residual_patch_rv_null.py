"""The R_V null after a layer-27 residual patch: as published, under a random-vector null (the same "no change":
non-diagnostic), one layer up (robustness), and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/residual_patch_rv_null/claim.toml (a null's must not hold).
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, SCHEMA, Context, as_published

pytestmark = pytest.mark.claim("residual_patch_rv_null", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_residual_patch_rv_null(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(Context)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    verify_claim(api.null_weights_result(as_published(claim_context(Context, null_lm)), lm, null_lm))
