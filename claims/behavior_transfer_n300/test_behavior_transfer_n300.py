"""The n300 behaviour transfer: the published arms and tests as coded, the controls that take the transfer
apart (all arms seed-matched), the patch's fire count, the null-weights check, and the published summary
(re-derivation, no model).

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/behavior_transfer_n300/claim.toml.
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, REDERIVATIONS, SCHEMA, as_published

pytestmark = pytest.mark.claim("behavior_transfer_n300", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_behavior_transfer_n300(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(api.TransferContext)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    ctx = claim_context(api.TransferContext, null_lm)
    verify_claim(api.null_weights_result(as_published(ctx, api.PUBLISHED_ARMS), lm, null_lm))


@pytest.mark.parametrize("protocol", list(REDERIVATIONS))
def test_rederive(protocol, claim, verify_claim):
    verify_claim(REDERIVATIONS[protocol](claim))
