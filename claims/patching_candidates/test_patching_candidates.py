"""Activation-patching candidates, re-derived from the source's committed CSVs and summaries: the README's table,
the summary means, the composite from its definition, and the sign consistency read as a corrected sign test.

No model runs, so every test here runs in the default suite and asserts its criterion on the published data
(robustness checks are reported, not asserted).
"""

from __future__ import annotations

import pytest

from .protocols import PROTOCOLS, SCHEMA, Tables

pytestmark = pytest.mark.claim("patching_candidates", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_patching_candidates(protocol, claim, published_data, verify_claim):
    verify_claim(PROTOCOLS[protocol](Tables.of(claim, published_data)))
