"""RFC compression by instruction tuning, Llama-3.1-8B: as published and under controls.

The instruct model is `lm`; its base comes from the plugin's model cache, which keeps both loaded. On tiny or
random-weight models these tests assert that each result is well formed; on the published weights they assert
the criteria in fixtures/claims/rfc_instruct_compresses_llama.toml. The source's Llama table is not among
../shared/published, so this claim has no re-derivation.
"""

from __future__ import annotations

import pytest

from harness.results import check
from harness.role import RoleContext
from harness.role_controls import PROTOCOLS

pytestmark = pytest.mark.claim("rfc_instruct_compresses_llama")


@pytest.fixture(scope="module")
def measured():
    """Entropies measured by this module's protocols, shared so that each forward runs once per model."""
    return {}


@pytest.fixture
def role(lm, model_cache, claim, prompt_bank, harness_options, measured):
    return RoleContext.for_instruct(claim, lm, model_cache.get, prompt_bank, harness_options.seed,
                                    harness_options.batch_size, measured)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rfc_instruct_compresses_llama(protocol, role, record_claim):
    result = PROTOCOLS[protocol](role)
    record_claim(result)
    check(result)

