"""RFC compression by instruction tuning, Mistral-7B v0.1: as published, re-derived from the published
table, and under controls.

The instruct model is `lm`; its base comes from the plugin's model cache (the `role` fixture in
claims/conftest.py). On tiny or random-weight models these tests assert that each result is well formed; on
the published weights (and the published tables) they assert the criteria in claim.toml beside this module.
A control that would repeat as_published on a model is recorded as dropped and skipped, never counted.
"""

from __future__ import annotations

import pytest

from harness import api
from harness.claimkit.role_controls import PROTOCOLS, SCHEMA
from harness.claimkit.role_rederive import rederive

pytestmark = pytest.mark.claim("rfc_instruct_compresses_mistral", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rfc_instruct_compresses_mistral(protocol, role, verify_claim):
    verify_claim(PROTOCOLS[protocol](role))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, null_role, verify_claim):
    verify_claim(api.null_weights_result(PROTOCOLS["as_published"](null_role), lm, null_lm))


def test_rederive(claim, published_data, verify_claim):
    verify_claim(rederive(claim, published_data))
