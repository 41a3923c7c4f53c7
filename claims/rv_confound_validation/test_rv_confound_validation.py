"""The R_V confound validation: champions against length-matched and pseudo-recursive prompts as coded,
token-matched and token-count controls, the source's length correlation, the null-weights check, and the
published summary checked against itself (re-derivation, no model).

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/rv_confound_validation/claim.toml.
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, REDERIVATIONS, SCHEMA, as_published

pytestmark = pytest.mark.claim("rv_confound_validation", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rv_confound_validation(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(api.TableContext)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    verify_claim(api.null_weights_result(as_published(claim_context(api.TableContext, null_lm)), lm, null_lm))


@pytest.mark.parametrize("protocol", list(REDERIVATIONS))
def test_rederive(protocol, claim, verify_claim):
    verify_claim(REDERIVATIONS[protocol](claim))
