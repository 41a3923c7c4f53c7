"""RFC compression by instruction tuning, Mistral-7B v0.1: as published, re-derived from
the published table, and under controls.

The instruct model is `lm`; its base comes from the plugin's model cache, which keeps both loaded. On tiny or
random-weight models these tests assert that each result is well formed; on the published weights (and the
published table) they assert the criteria in fixtures/claims/rfc_instruct_compresses_mistral.toml.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.results import check
from harness.role import RoleContext
from harness.role_controls import PROTOCOLS, rederive

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "published"

pytestmark = pytest.mark.claim("rfc_instruct_compresses_mistral")


@pytest.fixture(scope="module")
def measured():
    """Entropies measured by this module's protocols, shared so that each forward runs once per model."""
    return {}


@pytest.fixture
def role(lm, model_cache, claim, prompt_bank, harness_options, measured):
    return RoleContext.for_instruct(claim, lm, model_cache.get, prompt_bank, harness_options.seed,
                                    harness_options.batch_size, measured)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rfc_instruct_compresses_mistral(protocol, role, record_claim):
    result = PROTOCOLS[protocol](role)
    record_claim(result)
    check(result)


def test_rederive(claim, record_claim):
    if "data_file" not in claim.published:
        pytest.skip(f"{claim.id} names no published table ([published].data_file): the source's table for "
                    "this model is not among ../shared/published")
    if not (PUBLISHED / claim.published["data_file"]).exists():
        pytest.skip(f"published table not found at {PUBLISHED}; the replay needs ../shared/published beside "
                    "the checkout")
    result = rederive(claim, PUBLISHED)
    record_claim(result)
    check(result)
