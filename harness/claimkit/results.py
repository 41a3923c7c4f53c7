"""Protocol results: the one dict shape every claim test records, and the checks every claim test makes.

Each result says whose evidence it is (`scope`): the claim's own published models ("published"), another
model with real weights ("generalisation": evidence about the protocol on that model, not about the published
claim), or tiny and random stand-ins ("stand-in": the protocol runs end to end, no evidence at all). Where the
model's depth differs from the published one, published layer l runs at layer `layer_map["map"][l]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from harness.claimkit.prompts import PromptBank
from harness.claimkit.registry import Claim, Criterion, evaluate
from harness.engine.models import LoadedModel
from harness.engine.sites import map_layer

KINDS = ("as_published", "control", "rederive")
SCOPES = ("published", "generalisation", "stand-in")


def scope(claim: Claim, lm: LoadedModel | None) -> str:
    """Whose evidence a result is: the claim's published models, another real model, or a stand-in."""
    if lm is None or lm.id in claim.models:
        return "published"
    return "stand-in" if lm.weights in ("tiny", "random") else "generalisation"


def layer_map(claim: Claim, lm: LoadedModel | None) -> dict[str, Any] | None:
    """How the claim's published layers map onto this model (relative depth, harness.engine.sites.map_layer)."""
    if lm is None:
        return None
    published, n_layers = claim.published_n_layers, lm.dims.n_layers
    mapping: dict[str, Any] = {"published_n_layers": published, "n_layers": n_layers}
    if published == n_layers:
        return {**mapping, "rule": "identity"}
    return {**mapping, "rule": f"relative depth: l -> min({n_layers - 1}, l * {n_layers} // {published})",
            "map": [map_layer(layer, published, n_layers) for layer in range(published)]}


def protocol_result(claim: Claim, protocol: str, kind: str, criterion: Criterion, observed: Mapping[str, Any], *,
                    lm: LoadedModel | None = None, banks: tuple[PromptBank, ...] = (),
                    n: Mapping[str, int] | None = None,
                    exclusions: Mapping[str, int] | None = None, tests: Mapping[str, Any] | None = None,
                    published: Mapping[str, Any] | None = None, notes: tuple[str, ...] = (),
                    non_diagnostic: bool = False, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate `criterion` on `observed` and package everything the report needs."""
    if kind not in KINDS:
        raise ValueError(f"result kind {kind!r}; allowed: {KINDS}")
    passed, detail = evaluate(criterion, observed)
    if passed is None and not notes:
        missing = sorted(m for m, d in detail.items() if d["passed"] is None)
        notes = (f"inconclusive: {', '.join(missing)} not observed or not finite; "
                 f"exclusions: {dict(exclusions or {}) or 'none'}",)
    return {
        "claim": claim.id, "claim_version": claim.version, "protocol": protocol, "kind": kind,
        "model": lm.id if lm is not None else "published-data",
        "weights": lm.weights if lm is not None else "published-data",
        "model_info": lm.describe() if lm is not None else None,
        "scope": scope(claim, lm), "layer_map": layer_map(claim, lm),
        "passed": passed, "criterion": criterion, "criterion_detail": detail,
        "published": dict(published or {}), "observed": dict(observed), "tests": dict(tests or {}),
        "n": dict(n or {}), "exclusions": dict(exclusions or {}), "notes": list(notes),
        "non_diagnostic": non_diagnostic, "prompt_banks": [b.describe() for b in banks],
        "protocol_params": dict(claim.protocol), "data": dict(data or {}),
    }


def is_diagnostic(result: Mapping[str, Any]) -> bool:
    """Only the published models' pretrained weights (or the published data itself) can confirm or refute a
    claim; a result on any other model (generalisation, stand-in) cannot."""
    return result["weights"] in ("pretrained", "published-data") and result.get("scope", "published") == "published"


def check(result: Mapping[str, Any]) -> None:
    """Every claim test ends here: the result must be well formed; on the published weights the criterion must
    hold. Elsewhere a well-formed result is all there is to assert: passed, failed, or inconclusive with its
    reason are the allowed outcomes (the verdict is the science, not the test's business)."""
    problems = [f"observed {k} = {v!r} is not finite" for k, v in result["observed"].items()
                if isinstance(v, float) and not math.isfinite(v) and result["passed"] is not None]
    if result["passed"] not in (True, False, None):
        problems.append(f"passed = {result['passed']!r}; allowed: True, False, None (inconclusive)")
    if result["passed"] is None and not result["notes"]:
        problems.append("inconclusive without a note saying why")
    if result.get("scope", "published") not in SCOPES:
        problems.append(f"scope = {result.get('scope')!r}; allowed: {', '.join(SCOPES)}")
    problems += [f"n[{k}] = {v!r} is negative" for k, v in result["n"].items() if v < 0]
    problems += [f"criterion metric {m!r} was not observed" for m in result["criterion"]
                 if m not in result["observed"]]
    assert not problems, f"{result['claim']}/{result['protocol']} on {result['model']}: malformed: {problems}"
    if is_diagnostic(result):
        assert result["passed"] is not None, (
            f"{result['claim']}/{result['protocol']} on {result['model']}: inconclusive: {result['notes']}")
        assert result["passed"] is True, (
            f"{result['claim']}/{result['protocol']} on {result['model']}: criterion not met: "
            f"{result['criterion_detail']}")
