"""What a claim test hands to the report must cross to the xdist controller: execnet serialises only plain
types, so a numpy scalar in a result (scipy returns them) crashed a `pytest -n 2` run with an INTERNALERROR
(behavior_transfer_n300's rederive, 2026-12-01). record_claim makes the result plain before it is attached."""

from __future__ import annotations

import pytest
from plugin_runs import demo_claim, inprocess

NUMPY_RESULT = '''

def test_numpy_result(model_id, claim, record_claim, request):
    import execnet
    import numpy as np

    record_claim({"claim": claim.id, "claim_version": claim.version, "protocol": "as_published",
                  "kind": "as_published", "model": model_id, "weights": "tiny", "model_info": None,
                  "passed": np.bool_(True), "criterion": {}, "criterion_detail": {}, "published": {},
                  "observed": {"x": np.float64(1.5), "n": np.int64(3)}, "tests": {"t": (np.float64(2.0),)},
                  "n": {}, "exclusions": {}, "notes": [], "non_diagnostic": False, "prompt_banks": [],
                  "protocol_params": {}, "data": {"rows": [np.float32(0.25)]}})
    execnet.dumps(request.node.user_properties)  # raises DumpError on a numpy scalar
'''


def test_a_result_with_numpy_scalars_can_cross_to_the_xdist_controller(pytester: pytest.Pytester) -> None:
    demo_claim(pytester.path, extra=NUMPY_RESULT)
    result = inprocess(pytester, "--models", "tiny-mistral-instruct", "-k", "numpy",
                       f"--claims-json={pytester.path / 'c.json'}")
    assert result.ret == 0, result.outlines[-30:]
    result.assert_outcomes(passed=1)
