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

from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL, declared, protocol_kind
from harness.claimkit.prompts import PromptBank
from harness.claimkit.registry import Claim, Criterion, evaluate
from harness.claimkit.verdicts import KINDS, ControlOutcome, Effect, control_decision
from harness.engine.models import LoadedModel
from harness.engine.sites import map_layer

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
                    non_diagnostic: bool = False, data: Mapping[str, Any] | None = None,
                    effect: Effect | None = None, artefact_rejects: bool = False,
                    n_needed: int | None = None) -> dict[str, Any]:
    """Evaluate `criterion` on `observed` and package everything the report needs.

    A `control` states its `effect` (estimate and CI in the units of the published effect) and is decided by
    `verdicts.control_decision`: its `decision` is pass, fail (positive evidence of the artefact) or
    underpowered (with `n_needed`), and its `passed` is True only for pass. Other kinds are judged by their
    criterion alone. The result carries what the claim declares (`declared`, from claim.toml), so the report
    can tell which declared protocols never ran; the plugin adds the run's skips and null-weights choice.
    """
    if kind not in KINDS:
        raise ValueError(f"result kind {kind!r}; allowed: {KINDS}")
    if protocol_kind(claim, protocol) != kind:
        raise ValueError(f"{claim.path}: protocol {protocol!r} is of kind {protocol_kind(claim, protocol)!r} "
                         f"(its name or its [controls] table's kind), but its result says {kind!r}; name it "
                         f"'{kind}:<name>' or set the table's kind")
    passed, detail = evaluate(criterion, observed)
    outcome = control_decision(effect, artefact_rejects, n_needed) if effect is not None else None
    notes = _notes(claim, lm, kind, effect is not None, passed, detail, exclusions, notes)
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
        "declared": declared(claim, model_based=lm is not None).as_dict(),
        **(_decided(outcome, passed) if kind == "control" and outcome is not None else {}),
        **({"effect": outcome.effect, "decision_reason": outcome.reason} if outcome is not None else {}),
    }


def _notes(claim: Claim, lm: LoadedModel | None, kind: str, has_effect: bool, passed: bool | None,
           detail: Mapping[str, Any], exclusions: Mapping[str, int] | None, notes: tuple[str, ...]) -> tuple[str, ...]:
    """Why a result is inconclusive, which dtype ran where the protocol names another, and a control without
    an effect."""
    if passed is None and not notes:
        missing = sorted(m for m, d in detail.items() if d["passed"] is None)
        notes = (f"inconclusive: {', '.join(missing)} not observed or not finite; "
                 f"exclusions: {dict(exclusions or {}) or 'none'}",)
    ran = str(lm.model.dtype).removeprefix("torch.") if lm is not None else None
    if lm is not None and claim.protocol.get("dtype") not in (None, ran):
        notes = (*notes, f"the protocol's dtype is {claim.protocol['dtype']}; this model ran in {ran}"
                 + (" (a tiny stand-in, float32 on the CPU)" if lm.spec.tiny else ""))
    if kind == "control" and not has_effect:  # no effect with a CI: no decision, the verdict cannot rest on it
        notes = (*notes, "this control states no effect with a CI: its criterion is reported, it decides nothing")
    return notes


def _decided(outcome: ControlOutcome, criterion_passed: bool | None) -> dict[str, Any]:
    """A control's pass/fail is its decision; the criterion's own outcome stays beside it."""
    passed = {"pass": True, "fail": False}.get(outcome.decision or "")
    return {"passed": passed, "decision": outcome.decision, "n_needed": outcome.n_needed,
            "criterion_passed": criterion_passed}


def null_weights_result(result: Mapping[str, Any], lm: LoadedModel, twin: LoadedModel) -> dict[str, Any]:
    """The null-weights check: `result` is the as-published protocol run on `twin`, a seeded random-weight
    twin of `lm` (same architecture, dtype and tokenizer). It is recorded as `null:random_weights` of `lm`;
    where its criterion holds, the criterion is non-diagnostic (it holds without the trained weights)."""
    if result["kind"] != "as_published":
        raise ValueError(f"the null-weights check re-runs an as-published protocol, got {result['protocol']!r} "
                         f"of kind {result['kind']!r}")
    note = (f"the as-published criterion on a seeded random-weight twin of {lm.id} "
            f"({twin.resolved_revision}); where it holds the criterion is non-diagnostic")
    own = result["scope"] if result["scope"] == "published" or lm.weights in ("tiny", "random") else "generalisation"
    return {**result, "protocol": NULL_WEIGHTS_PROTOCOL, "kind": "null", "model": lm.id, "weights": lm.weights,
            "scope": own,
            "model_info": lm.describe(), "null_model": twin.describe(), "as_published_protocol": result["protocol"],
            "non_diagnostic": result["passed"] is True, "notes": [note, *result["notes"]]}


def is_diagnostic(result: Mapping[str, Any]) -> bool:
    """Only the published models' pretrained weights (or the published data itself) can confirm or refute a
    claim; a result on any other model (generalisation, stand-in) cannot."""
    return result["weights"] in ("pretrained", "published-data") and result.get("scope", "published") == "published"


def check(result: Mapping[str, Any]) -> None:
    """Every claim test ends here: the result must be well formed; on the published models' real weights (or the
    published data) the claim must hold: an as-published, re-derived or control criterion holds, and a null's
    does not (a criterion that holds under its null is non-diagnostic). Robustness checks and measurements are
    reported, never asserted. Elsewhere (generalisation, stand-ins) a well-formed result is all there is to
    assert: the verdict is the science, not the test's business."""
    problems = [f"observed {k} = {v!r} is not finite beside a criterion that holds"
                for k, v in result["observed"].items()
                if isinstance(v, float) and not math.isfinite(v) and result["passed"] is True]
    if result["passed"] not in (True, False, None):
        problems.append(f"passed = {result['passed']!r}; allowed: True, False, None (inconclusive)")
    if result["passed"] is None and not result["notes"]:
        problems.append("inconclusive without a note saying why")
    if result.get("scope", "published") not in SCOPES:
        problems.append(f"scope = {result.get('scope')!r}; allowed: {', '.join(SCOPES)}")
    problems += [f"n[{k}] = {v!r} is negative" for k, v in result["n"].items() if v < 0]
    problems += [f"criterion metric {m!r} was not observed" for m in result["criterion"]
                 if m not in result["observed"]]
    where = f"{result['claim']}/{result['protocol']} on {result['model']}"
    assert not problems, f"{where}: malformed: {problems}"
    if not is_diagnostic(result) or result["kind"] in ("robustness", "measure"):
        return
    assert result["passed"] is not None, f"{where}: inconclusive: {result['notes']}"
    if result["kind"] == "null":
        assert result["passed"] is False, (f"{where}: the as-published criterion also holds under this null, so "
                                           f"it is non-diagnostic: {result['criterion_detail']}")
        return
    why = result.get("decision_reason") or result["criterion_detail"]
    assert result["passed"] is True, f"{where}: criterion not met: {why}"
