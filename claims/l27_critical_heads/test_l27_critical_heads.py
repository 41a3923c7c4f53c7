"""Single-head ablation at L27 and L25: as published (the mis-indexed GQA slice), re-derived from the published
figures, under the GQA-aware ablation measured downstream and the column-slice null, and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/l27_critical_heads/claim.toml.
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, SCHEMA, Context, as_published, rederive

pytestmark = pytest.mark.claim("l27_critical_heads", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_l27_critical_heads(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(Context)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    verify_claim(api.null_weights_result(as_published(claim_context(Context, null_lm)), lm, null_lm))


def test_rederive(claim, verify_claim):
    verify_claim(rederive(claim))
