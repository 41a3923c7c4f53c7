"""The verdict model: what a protocol result may conclude, and one verdict per (claim, model).

A claim declares its protocols in claim.toml, each of one kind:

| kind          | what it is                                                             | counts towards        |
|---------------|------------------------------------------------------------------------|-----------------------|
| as_published  | the source's protocol and criterion verbatim                           | the headline          |
| control       | one check against one known artefact, stating an effect with a CI      | reproduced / fragile  |
| robustness    | alternative tests, permutation p, larger n: reported beside controls   | nothing               |
| null          | the as-published criterion on its own null (unablated text, a random   | non_diagnostic        |
|               | source, a random-weight twin of the same architecture)                 |                       |
| rederive      | arithmetic from a published table, no model                            | rederived             |
| measure       | a planned or descriptive protocol with no published claim              | measured              |

A control fails only on positive evidence (`control_decision`): its CI of the effect, in the units of the
published effect, lies wholly below `min_fraction` of the published effect, or its own test rejects in the
artefact's direction. A CI that reaches both zero and that fraction cannot tell artefact from effect: the
control is `underpowered`, with the n that a test at the published effect would need.

`verdict` combines the protocols of one (claim, model); its rules are in its docstring and design.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scipy import optimize
from scipy import stats as sps

VERDICTS = ("reproduced", "fragile", "underpowered", "not_reproduced", "non_diagnostic", "measured", "rederived",
            "inconclusive", "skipped", "error")
KINDS = ("as_published", "control", "robustness", "null", "rederive", "measure")
Decision = Literal["pass", "fail", "underpowered"]
DECISIONS: tuple[Decision, ...] = ("pass", "fail", "underpowered")


@dataclass(frozen=True)
class Effect:
    """An effect estimate with its confidence interval, in the units and sign convention of the published effect.

    `published` is the published effect in the same units; its sign is the claimed direction (a negative
    published dRFC claims compression). `min_fraction` is the share of the published effect below which the
    effect counts as gone (e.g. 0.5: "the matched effect is below half the published one").
    """

    estimate: float
    ci_low: float
    ci_high: float
    published: float
    min_fraction: float = 0.5
    confidence: float = 0.95
    name: str = "effect"

    def __post_init__(self) -> None:
        if self.published == 0 or not math.isfinite(self.published):
            raise ValueError(f"effect {self.name!r}: published effect {self.published!r} must be finite and non-zero "
                             "(its sign is the claimed direction)")
        if not 0 < self.min_fraction <= 1:
            raise ValueError(f"effect {self.name!r}: min_fraction {self.min_fraction!r} must lie in (0, 1]")

    def directional(self) -> tuple[float, float, float]:
        """(estimate, low, high) flipped so that the claimed direction is positive."""
        sign = 1.0 if self.published > 0 else -1.0
        low, high = sorted((sign * self.ci_low, sign * self.ci_high))
        return sign * self.estimate, low, high

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ControlOutcome:
    decision: Decision | None  # None: no finite estimate or CI (inconclusive)
    reason: str
    n_needed: int | None = None  # per group, for a test at the published effect (underpowered only)
    effect: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def control_decision(effect: Effect, artefact_rejects: bool = False, n_needed: int | None = None) -> ControlOutcome:
    """pass, fail (positive evidence of the artefact) or underpowered; None when the effect is not finite.

    - fail: the CI lies wholly below `min_fraction * |published|` in the claimed direction, or the control's
      own test rejects in the artefact's direction (`artefact_rejects`).
    - pass: the CI excludes zero in the claimed direction and reaches `min_fraction * |published|`.
    - underpowered: the CI covers both zero ("artefact") and that fraction ("no artefact").
    """
    values = (effect.estimate, effect.ci_low, effect.ci_high)
    if not all(math.isfinite(v) for v in values):
        return ControlOutcome(None, f"{effect.name}: estimate or CI not finite {values}", None, effect.as_dict())
    _, low, high = effect.directional()
    floor = effect.min_fraction * abs(effect.published)
    if artefact_rejects:
        return ControlOutcome("fail", f"{effect.name}: the control's test rejects in the artefact's direction",
                              None, effect.as_dict())
    if high < floor:
        return ControlOutcome("fail", f"{effect.name}: CI [{low:.4g}, {high:.4g}] (claimed direction positive) lies "
                              f"below {effect.min_fraction:g} of the published effect ({floor:.4g})", None,
                              effect.as_dict())
    if low > 0:
        return ControlOutcome("pass", f"{effect.name}: CI [{low:.4g}, {high:.4g}] excludes 0 and reaches "
                              f"{effect.min_fraction:g} of the published effect", None, effect.as_dict())
    return ControlOutcome("underpowered", f"{effect.name}: CI [{low:.4g}, {high:.4g}] covers both 0 and "
                          f"{effect.min_fraction:g} of the published effect ({floor:.4g})", n_needed,
                          effect.as_dict())


def n_for_power(d: float, alpha: float = 0.05, power: float = 0.8, alternative: str = "greater",
                paired: bool = False, n_max: int = 100_000) -> int | None:
    """Per-group n at which a t-test detects standardised effect `d` with `power` (noncentral t, scipy).

    Two-sample Student t by default (equal groups); `paired` for a one-sample / paired t on differences.
    None when even `n_max` does not reach the power (or d is 0 or not finite).
    """
    if not math.isfinite(d) or d == 0:
        return None
    d = abs(d)
    tails = 1 if alternative in ("greater", "less") else 2

    def achieved(n: float) -> float:
        df = n - 1 if paired else 2 * n - 2
        nc = d * math.sqrt(n) if paired else d * math.sqrt(n / 2)
        crit = sps.t.ppf(1 - alpha / tails, df)
        return float(sps.nct.sf(crit, df, nc))

    if achieved(n_max) < power:
        return None
    if achieved(2) >= power:  # so large an effect that the smallest test already has the power
        return 2
    root = optimize.brentq(lambda n: achieved(n) - power, 2, n_max)
    return math.ceil(root)


@dataclass(frozen=True)
class Declared:
    """What a claim declares for one model: its protocols by kind (from claim.toml; names without the kind
    prefix), which controls or nulls the user skipped on purpose (`--skip-control`), and whether the
    null-weights check (`null:random_weights`, one of `nulls` when on) was asked for; the report lists all."""

    as_published: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()
    robustness: tuple[str, ...] = ()
    nulls: tuple[str, ...] = ()
    skipped_on_purpose: tuple[str, ...] = ()
    null_weights: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Declared:
        """From a report's `declared` entry (unknown keys are an error: a report of another harness version)."""
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"declared protocols hold unknown key(s) {sorted(unknown)}; allowed: "
                             f"{sorted(cls.__dataclass_fields__)}")
        lists = {k: tuple(str(x) for x in v) for k, v in raw.items() if k != "null_weights"}
        return cls(**lists, null_weights=bool(raw.get("null_weights", False)))

    @classmethod
    def union(cls, many: Iterable[Declared]) -> Declared:
        """Every declaration of one (claim, model), e.g. from the results of several workers or hosts."""
        items = list(many)

        def joined(name: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(x for d in items for x in getattr(d, name)))

        return cls(joined("as_published"), joined("controls"), joined("robustness"), joined("nulls"),
                   joined("skipped_on_purpose"), any(d.null_weights for d in items))


@dataclass
class Verdict:
    verdict: str
    reasons: list[str]
    controls: dict[str, str | None]  # control protocol -> decision (None: inconclusive)
    not_run: list[str]  # declared controls and nulls (names without the kind) that produced no result
    skipped_on_purpose: list[str]
    n_needed: dict[str, int | None]  # underpowered control -> per-group n for a test at the published effect
    robustness: dict[str, bool | None] = field(default_factory=dict)  # reported beside, never counted
    nulls: dict[str, bool | None] = field(default_factory=dict)  # null protocol -> the criterion held there

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(results: Iterable[Mapping[str, Any]], declared: Declared) -> Verdict:
    """One verdict for one (claim, model) from its protocol results.

    Each result has `protocol` ("<kind>:<name>" for controls, robustness checks and nulls), `kind`, `passed`
    (the criterion: True, False or None) and, for controls, `decision` (pass | fail | underpowered | None).
    Rules, first match wins:
    1. no results of a model kind: only `rederive` -> rederived (all pass) or not_reproduced; only `measure`
       -> measured (inconclusive when one is None);
    2. an as-published criterion that is None -> inconclusive; False -> not_reproduced; beside an as-published
       result (a claim judged on the published data alone, `needs = "published_data"`), a re-derivation that
       is None -> inconclusive and one that fails -> not_reproduced (the table does not give the figure);
    3. a null on which the as-published criterion also holds -> non_diagnostic;
    4. a control that fails (positive evidence of its artefact) -> fragile;
    5. a declared control or null not run (and not skipped on purpose) -> inconclusive ("controls not run: ...",
       "nulls not run: ..."); a null whose criterion could not be evaluated -> inconclusive;
    6. a control underpowered -> underpowered (with n_needed); one without a decision -> inconclusive;
    7. no control ran at all -> inconclusive (reproduced needs at least one diagnostic control);
    8. otherwise -> reproduced.
    Robustness results never change the verdict. A result marked `dropped` (a control that would repeat
    as_published exactly on this model) is listed as skipped on purpose, with its reason, and never counted.
    """
    everything = list(results)
    dropped = [r for r in everything if r.get("dropped")]
    items = [r for r in everything if not r.get("dropped")]
    by_kind: dict[str, list[Mapping[str, Any]]] = {k: [r for r in items if r.get("kind") == k] for k in KINDS}
    controls = {str(r["protocol"]): r.get("decision") for r in by_kind["control"]}
    n_needed = {str(r["protocol"]): r.get("n_needed") for r in by_kind["control"]
                if r.get("decision") == "underpowered"}
    ran = {str(r["protocol"]).partition(":")[2] for r in everything if r.get("kind") in ("control", "null")}
    not_run = [c for c in (*declared.controls, *declared.nulls)
               if c not in ran and c not in declared.skipped_on_purpose]
    skipped = [*declared.skipped_on_purpose,
               *(f"{str(r['protocol']).partition(':')[2]} (dropped: {r['dropped']})" for r in dropped)]
    out = Verdict("inconclusive", [], controls, not_run, skipped, n_needed,
                  {str(r["protocol"]): r.get("passed") for r in by_kind["robustness"]},
                  {str(r["protocol"]): r.get("passed") for r in by_kind["null"]})
    if not by_kind["as_published"]:
        return _tabular(out, by_kind)
    return _modelled(out, by_kind, declared)


def _tabular(out: Verdict, by_kind: Mapping[str, list[Mapping[str, Any]]]) -> Verdict:
    for kind, label in (("rederive", "rederived"), ("measure", "measured")):
        found = by_kind[kind]
        if not found:
            continue
        passed = [r.get("passed") for r in found]
        if None in passed:
            out.reasons.append(f"{kind}: " + ", ".join(str(r["protocol"]) for r in found if r.get("passed") is None)
                               + " inconclusive")
            return out
        if kind == "rederive" and not all(passed):
            out.verdict = "not_reproduced"
            out.reasons.append("the published table does not give the published figure: "
                               + ", ".join(str(r["protocol"]) for r in found if not r.get("passed")))
            return out
        out.verdict = label
        return out
    out.reasons.append("no as-published, re-derivation or measurement result")
    return out


def _headline(out: Verdict, by_kind: Mapping[str, list[Mapping[str, Any]]]) -> bool:
    """Rule 2: the as-published criteria, and the re-derivations judged beside them. True when they decide."""
    held = [r.get("passed") for r in by_kind["as_published"]]
    if None in held:
        out.reasons.append("as published: criterion not evaluable (too little valid data)")
        return True
    if not all(held):
        out.verdict = "not_reproduced"
        return True
    rederived = {str(r["protocol"]): r.get("passed") for r in by_kind["rederive"]}
    if None in rederived.values():
        out.reasons.append("rederive: " + ", ".join(p for p, ok in rederived.items() if ok is None) + " inconclusive")
        return True
    if not all(rederived.values()):
        out.verdict = "not_reproduced"
        out.reasons.append("the published table does not give the published figure: "
                           + ", ".join(p for p, ok in rederived.items() if not ok))
        return True
    return False


def _modelled(out: Verdict, by_kind: Mapping[str, list[Mapping[str, Any]]], declared: Declared) -> Verdict:
    if _headline(out, by_kind):
        return out
    nulls = [name for name, held in out.nulls.items() if held is True]
    if nulls:
        out.verdict = "non_diagnostic"
        out.reasons.append("the as-published criterion also holds under its null: " + ", ".join(nulls))
        return out
    failed = [name for name, d in out.controls.items() if d == "fail"]
    if failed:  # positive evidence of an artefact: whatever else ran or did not
        out.verdict = "fragile"
        out.reasons.append("fragile: " + ", ".join(failed))
        return out
    if out.not_run or None in out.nulls.values():
        for label, names in (("controls", declared.controls), ("nulls", declared.nulls)):
            missing = [c for c in out.not_run if c in names]
            if missing:
                out.reasons.append(f"{label} not run: " + ", ".join(missing))
        unknown = [name for name, held in out.nulls.items() if held is None]
        if unknown:
            out.reasons.append("null not evaluable: " + ", ".join(unknown))
        return out
    for decision, label in (("underpowered", "underpowered"), (None, "inconclusive")):
        hit = [name for name, d in out.controls.items() if d == decision]
        if hit:
            out.verdict = label
            out.reasons.append(f"{label}: " + ", ".join(hit))
            return out
    if not out.controls:
        out.reasons.append("no control ran: reproduced needs at least one diagnostic control")
        return out
    out.verdict = "reproduced"
    return out
