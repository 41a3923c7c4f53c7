"""RFC compression by instruction tuning, Llama-3.1-8B: as published and under controls.

The instruct model is `lm`; its base comes from the plugin's model cache (the `role` fixture in
claims/conftest.py). On tiny or random-weight models these tests assert that each result is well formed; on
the published weights they assert the criteria in fixtures/claims/rfc_instruct_compresses_llama.toml. The
source's Llama table is not among ../shared/published, so this claim has no re-derivation.
"""

from __future__ import annotations

import pytest

from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL
from harness.claimkit.results import check, null_weights_result
from harness.claimkit.role_controls import PROTOCOLS, SCHEMA

pytestmark = pytest.mark.claim("rfc_instruct_compresses_llama", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rfc_instruct_compresses_llama(protocol, role, record_claim):
    result = PROTOCOLS[protocol](role)
    record_claim(result)
    check(result)



@pytest.mark.parametrize("protocol", [NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, null_role, record_claim):
    result = null_weights_result(PROTOCOLS["as_published"](null_role), lm, null_lm)
    record_claim(result)
    check(result)
