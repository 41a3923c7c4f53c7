"""The L27 "causal transfer" of R_V (n = 45 pairs): as coded, re-derived from the published summary, under the
non-circular and within-window-shuffle controls, and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/rv_l27_patch_transfer_n45/claim.toml.
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, SCHEMA, Context, as_published, rederive

pytestmark = pytest.mark.claim("rv_l27_patch_transfer_n45", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rv_l27_patch_transfer_n45(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(Context)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    verify_claim(api.null_weights_result(as_published(claim_context(Context, null_lm)), lm, null_lm))


def test_rederive(claim, verify_claim):
    verify_claim(rederive(claim))
