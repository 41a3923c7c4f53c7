"""Layer-31 attention ablation "naked loop" (Mistral-7B-Instruct-v0.2): as published and under controls.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criterion in fixtures/claims/l31_ablation_repetition.toml.
"""

from __future__ import annotations

import pytest

from harness.claimkit.gen import GenContext
from harness.claimkit.results import check

from .protocols import PROTOCOLS, SCHEMA

pytestmark = pytest.mark.claim("l31_ablation_repetition", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_l31_ablation_repetition(protocol, lm, claim, prompt_bank, harness_options, record_claim):
    ctx = GenContext(claim, lm, prompt_bank, harness_options.seed, harness_options.batch_size)
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    check(result)
