"""Single-head ablation at L27 and L25: as published (the mis-indexed GQA slice), re-derived from the published
figures, under the GQA-aware ablation measured downstream and the column-slice null, and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/l27_critical_heads/claim.toml.
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, SCHEMA, Context, as_published, rederive

pytestmark = pytest.mark.claim("l27_critical_heads", schema=SCHEMA)


@pytest.fixture(scope="module")
def measured():
    """The intact and ablated runs, shared by this module's protocols (one set per model)."""
    return {}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_l27_critical_heads(protocol, lm, claim, prompt_bank, harness_options, record_claim, measured):
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
