"""The cross-architecture R_V table: as published on each model, token-matched controls, PHASE1's arithmetic,
the null-weights check, and what the two published reports give (re-derivations, no model).

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/cross_arch_rv_table/claim.toml.
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, REDERIVATIONS, SCHEMA, as_published

pytestmark = pytest.mark.claim("cross_arch_rv_table", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_cross_arch_rv_table(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(api.TableContext)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    verify_claim(api.null_weights_result(as_published(claim_context(api.TableContext, null_lm)), lm, null_lm))


@pytest.mark.parametrize("protocol", list(REDERIVATIONS))
def test_rederive(protocol, claim, verify_claim):
    verify_claim(REDERIVATIONS[protocol](claim))
