"""Graded head ablation (planned by the source, never run): effect sizes downstream of each ablated head.

There is no published figure: on every model these tests assert that the result is well formed, which on
the published weights is also what the criterion in fixtures/claims/graded_head_ablation.toml checks.
"""

from __future__ import annotations

import pytest

from harness.claimkit.results import check

from .protocols import PROTOCOLS, SCHEMA, AblationContext

pytestmark = pytest.mark.claim("graded_head_ablation", schema=SCHEMA)


@pytest.fixture(scope="module")
def measured():
    """The unablated run, shared by this module's protocols."""
    return {}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_graded_head_ablation(protocol, lm, claim, prompt_bank, harness_options, record_claim, measured):
    ctx = AblationContext(claim, lm, prompt_bank, harness_options.seed, harness_options.batch_size, measured)
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    check(result)
