"""The linear-probe figures, re-derived from the source's committed tables, and three checks of the probe
pipeline that the tables alone allow (the BOS position's constant input, the summary's rounding, the OOD
retention's denominator). The probes themselves are not re-derivable: their features were never committed.

No model runs, so every test here runs in the default suite and asserts its criterion on the published data
(robustness checks are reported, not asserted).
"""

from __future__ import annotations

import pytest

from .protocols import PROTOCOLS, SCHEMA, Tables

pytestmark = pytest.mark.claim("linear_probes", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_linear_probes(protocol, claim, published_data, verify_claim):
    verify_claim(PROTOCOLS[protocol](Tables.of(claim, published_data)))
