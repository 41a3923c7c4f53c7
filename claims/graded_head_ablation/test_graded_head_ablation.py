"""Graded head ablation (planned by the source, never run): effect sizes downstream of each ablated head.

There is no published figure: on every model these tests assert that the result is well formed, which on
the published weights is also what the criterion in fixtures/claims/graded_head_ablation.toml checks.
"""

from __future__ import annotations

import pytest

from .protocols import PROTOCOLS, SCHEMA, AblationContext

pytestmark = pytest.mark.claim("graded_head_ablation", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_graded_head_ablation(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(AblationContext)))
