"""The Llama-Mistral correlation of per-layer dRFC, judged on the source's published tables: as published (its iid
test), re-derived figure by figure, under the layer-autocorrelation control and beside its robustness checks.

No model runs, so every test here runs in the default suite. The as-published test and the re-derivation must
hold (the published data gives the published figures). The control's decision is this project's finding on the
published data, pinned in claim.toml ([controls.layer_autocorrelation].review_decision): the test fails if the
data or the method moves it. Where that finding is not `pass`, `api.check` must refuse the result as evidence
for the claim.
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, SCHEMA, Tables

pytestmark = pytest.mark.claim("rfc_corr_llama_mistral", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rfc_corr_llama_mistral(protocol, claim, published_data, record_claim):
    result = PROTOCOLS[protocol](Tables.of(claim, published_data))
    record_claim(result)
    if result["kind"] != "control":
        api.check(result)
        return
    expected = claim.control(protocol.partition(":")[2])["review_decision"]
    assert result["decision"] == expected, f"{protocol}: {result['decision_reason']} (claim.toml says {expected})"
    if expected == "pass":
        api.check(result)
    else:
        with pytest.raises(AssertionError, match=f"{protocol} on published-data"):
            api.check(result)
