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


@pytest.fixture(scope="module")
def measured():
    """The pairs' forward passes, shared by this module's protocols (one set per model)."""
    return {}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rv_l27_patch_transfer_n45(protocol, lm, claim, prompt_bank, harness_options, record_claim, measured):
    ctx = Context(claim, lm, prompt_bank, harness_options.seed, harness_options.batch_size, measured)
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    api.check(result)


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim, prompt_bank, harness_options, record_claim):
    ctx = Context(claim, null_lm, prompt_bank, harness_options.seed, harness_options.batch_size)
    result = api.null_weights_result(as_published(ctx), lm, null_lm)
    record_claim(result)
    api.check(result)


def test_rederive(claim, record_claim):
    result = rederive(claim)
    record_claim(result)
    api.check(result)
