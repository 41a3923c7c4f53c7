"""R_V separation across windows: the sweep as published, controls on prompts long enough for every window,
the source's min(W, T) rule beside, the null-weights check, and the published ranges (re-derivation, no model).

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/rv_window_robustness/claim.toml.
"""

from __future__ import annotations

import pytest

from harness import api

from .protocols import PROTOCOLS, REDERIVATIONS, SCHEMA, as_published

pytestmark = pytest.mark.claim("rv_window_robustness", schema=SCHEMA)


@pytest.fixture(scope="module")
def measured():
    """Captures shared by this module's protocols: one forward pass per model and prompt set."""
    return {}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rv_window_robustness(protocol, lm, claim, prompt_bank, harness_options, record_claim, measured):
    ctx = api.TableContext(claim, lm, prompt_bank, harness_options.seed, harness_options.batch_size, measured)
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    api.check(result)


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim, prompt_bank, harness_options, record_claim, measured):
    ctx = api.TableContext(claim, null_lm, prompt_bank, harness_options.seed, harness_options.batch_size, measured)
    result = api.null_weights_result(as_published(ctx), lm, null_lm)
    record_claim(result)
    api.check(result)


@pytest.mark.parametrize("protocol", list(REDERIVATIONS))
def test_rederive(protocol, claim, record_claim):
    result = REDERIVATIONS[protocol](claim)
    record_claim(result)
    api.check(result)
