"""RFC preserved by instruction tuning, Qwen2.5-7B: as published, re-derived from the committed table
(the verdict) and the superseded one (beside it), and under controls.

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

pytestmark = pytest.mark.claim("rfc_preserved_qwen", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rfc_preserved_qwen(protocol, role, verify_claim):
    verify_claim(PROTOCOLS[protocol](role))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, null_role, verify_claim):
    verify_claim(api.null_weights_result(PROTOCOLS["as_published"](null_role), lm, null_lm))


def test_rederive(claim, published_data, record_claim):
    """The verdict's table, committed last. claims-spec B.3 finds that it does not give the README's headline
    ([published].rederive_reproduces_headline): then the result is well formed and its criterion fails."""
    result = rederive(claim, published_data)
    record_claim(result)
    if claim.published["rederive_reproduces_headline"]:
        api.check(result)
    else:
        with pytest.raises(AssertionError, match="criterion not met"):
            api.check(result)


def test_rederive_superseded(claim, published_data, verify_claim):
    verify_claim(rederive(claim, published_data, "superseded_data_file"))
