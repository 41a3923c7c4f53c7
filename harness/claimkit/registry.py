"""Claim registry: <claim folder>/claim.toml -> Claim, validated at collection; criteria.

A claim is a folder named by its id, holding claim.toml, its prompt bank, its protocol code and its test
module. claim.toml has five tables:
- [claim]     id, version, title, statement, source {repo, commit, files}, models, published_n_layers,
              prompt_bank, and optionally tiny_models (default: every tiny model of the claim models' variant)
              and needs: what a model must offer for the claim to run on it ("model", the default: any
              supported model; "instruct_and_base": an instruct model whose base is known, from the registry
              or `--pair INSTRUCT=BASE`; "published_data": no model at all, every protocol runs on the source's
              published tables, so its as-published protocol, controls and nulls are judged on that data)
- [published] the published figures (numbers, lists of numbers or strings)
- [protocol]  the protocol parameters as the source ran it
- [criteria]  named criteria: `as_coded`, `as_stated`, ...; each maps a metric to {op = value}
- [controls]  one table per control, robustness check or null (its `kind`): description, criterion, and its
              own parameters

Verdicts are harness.claimkit.verdicts'.
"""

from __future__ import annotations

import difflib
import math
import operator
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.resources import seed_claims_dir

TABLES = {"claim", "published", "protocol", "criteria", "controls"}
CLAIM_KEYS = {"id", "version", "title", "statement", "source", "models", "published_n_layers", "prompt_bank"}
OPTIONAL_CLAIM_KEYS = {"tiny_models", "needs"}
NEEDS = ("model", "instruct_and_base", "published_data")
SOURCE_KEYS = {"repo", "commit", "files"}
OPS: dict[str, Callable[[float, float], bool]] = {
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
}


class ClaimError(ValueError):
    """A claim file that does not validate; the message names the file, the key and what is allowed."""


Criterion = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Claim:
    id: str
    version: int
    title: str
    statement: str
    source: dict[str, Any]
    models: tuple[str, ...]
    published_n_layers: int
    prompt_bank: str
    tiny_models: tuple[str, ...] | None
    published: dict[str, Any]
    protocol: dict[str, Any]
    criteria: dict[str, Criterion]
    controls: dict[str, dict[str, Any]]
    path: Path = field(compare=False)
    needs: str = "model"  # one of NEEDS

    @property
    def folder(self) -> Path:
        """The claim's folder: claim.toml, its prompt bank, protocol code and test module."""
        return self.path.parent

    def control(self, name: str) -> dict[str, Any]:
        if name not in self.controls:
            raise ClaimError(f"{self.path}: claim {self.id!r} has no control {name!r}; "
                             f"controls: {', '.join(self.controls)}")
        return self.controls[name]


def _fail(path: Path, what: str) -> ClaimError:
    return ClaimError(f"{path}: {what}")


def _check_keys(path: Path, where: str, got: Mapping[str, Any], required: set[str],
                optional: frozenset[str] | set[str] = frozenset()) -> None:
    allowed = required | optional
    unknown = set(got) - allowed
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, allowed, 1)) else repr(k)
                 for k in sorted(unknown)]
        raise _fail(path, f"unknown key(s) in [{where}]: {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}")
    missing = required - set(got)
    if missing:
        raise _fail(path, f"[{where}] is missing {', '.join(sorted(missing))}")


def validate_criterion(path: Path, where: str, criterion: Any) -> Criterion:
    """A criterion maps metric -> {op: number}; ops are lt, le, gt, ge."""
    if not isinstance(criterion, dict) or not criterion:
        raise _fail(path, f"[{where}] must map metric names to {{op = value}}, got {criterion!r}")
    for metric, rule in criterion.items():
        if not isinstance(rule, dict) or not rule or set(rule) - set(OPS):
            raise _fail(path, f"[{where}].{metric} = {rule!r}; use one or more of {', '.join(OPS)} with a number")
        for op, value in rule.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _fail(path, f"[{where}].{metric}.{op} = {value!r} is not a number")
    return criterion


def load_claim(path: Path) -> Claim:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise _fail(path, f"is not valid TOML ({err})") from err
    _check_keys(path, "top level", raw, TABLES)
    head = raw["claim"]
    _check_keys(path, "claim", head, CLAIM_KEYS, OPTIONAL_CLAIM_KEYS)
    _check_keys(path, "claim.source", head["source"], SOURCE_KEYS)
    if head["id"] != path.parent.name:
        raise _fail(path, f"claim.id = {head['id']!r} must equal the name of its folder {path.parent.name!r}")
    if not isinstance(head["version"], int) or head["version"] < 1:
        raise _fail(path, f"claim.version = {head['version']!r}; use a positive integer")
    if not isinstance(head["published_n_layers"], int) or head["published_n_layers"] < 1:
        raise _fail(path, f"claim.published_n_layers = {head['published_n_layers']!r}; use a positive integer")
    if head.get("needs", "model") not in NEEDS:
        raise _fail(path, f"claim.needs = {head['needs']!r}; allowed: {', '.join(NEEDS)}")
    criteria = {name: validate_criterion(path, f"criteria.{name}", c) for name, c in raw["criteria"].items()}
    for name, control in raw["controls"].items():
        if "description" not in control or "criterion" not in control:
            raise _fail(path, f"[controls.{name}] needs 'description' and 'criterion'")
        validate_criterion(path, f"controls.{name}.criterion", control["criterion"])
    return Claim(head["id"], head["version"], head["title"], head["statement"], dict(head["source"]),
                 tuple(head["models"]), head["published_n_layers"], head["prompt_bank"],
                 tuple(head["tiny_models"]) if "tiny_models" in head else None, raw["published"],
                 raw["protocol"], criteria, raw["controls"], path, head.get("needs", "model"))


def load_claims(directory: Path | None = None) -> dict[str, Claim]:
    """Every claim folder (`<id>/claim.toml`) under `directory`; the seed claims by default."""
    claims: dict[str, Claim] = {}
    for path in sorted((directory or seed_claims_dir()).glob("*/claim.toml")):
        claim = load_claim(path)
        if claim.id in claims:
            raise _fail(path, f"duplicate claim id {claim.id!r} (also in {claims[claim.id].path})")
        claims[claim.id] = claim
    return claims


def get_claim(claim_id: str, claims: Mapping[str, Claim] | None = None) -> Claim:
    known = claims if claims is not None else load_claims()
    if claim_id not in known:
        close = difflib.get_close_matches(claim_id, known, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ClaimError(f"unknown claim {claim_id!r}{hint}; known: {', '.join(sorted(known))}")
    return known[claim_id]


def evaluate(criterion: Criterion, observed: Mapping[str, float]) -> tuple[bool | None, dict[str, Any]]:
    """(passed, per-metric detail): False when any rule fails, whatever else is missing; None (inconclusive)
    only when no rule fails and some observed value is missing or NaN; True when every rule holds."""
    detail: dict[str, Any] = {}
    for metric, rule in criterion.items():
        value = observed.get(metric)
        if value is None or math.isnan(float(value)):  # float(): numpy float32 NaN is no Python float
            detail[metric] = {"value": value, "rule": rule, "passed": None}
            continue
        ok = all(OPS[op](float(value), float(bound)) for op, bound in rule.items())
        detail[metric] = {"value": value, "rule": rule, "passed": ok}
    outcomes = [d["passed"] for d in detail.values()]
    if False in outcomes:
        return False, detail
    return (None if None in outcomes else True), detail
