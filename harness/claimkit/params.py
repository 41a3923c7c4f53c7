"""Typed claim parameters: a claim's code declares the keys of its [protocol] table and of each [controls.<name>]
table, with their types, and claim.toml is validated against that declaration at collection.

A declaration maps key -> type expression: `int`, `float` (an integer is accepted), `str`, `bool`,
`list[str]` and other `list[...]`, `dict[str, float]` and other `dict[str, ...]`, `Literal["a", "b"]`, unions
(`int | Literal["all"]`), and `X | None` for a key that may be left out. Every control also accepts the keys in
CONTROL_KEYS. The test module hands the declaration to the plugin with its marker:

    pytestmark = pytest.mark.claim("rv_contraction", schema=SCHEMA)
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.claimkit.registry import Claim, ClaimError

# Keys every [controls.<name>] table may hold, whatever the claim.
CONTROL_KEYS: dict[str, Any] = {
    "description": str,
    "criterion": dict[str, Any],
    "kind": typing.Literal["control", "robustness", "null", "measure"] | None,
    "effect": str | None,            # the observed key that holds the effect estimate
    "min_fraction": float | None,    # fails below this fraction of the published effect
    "published_effect": float | None,  # the effect the claim implies, where no figure was published in its units
}


@dataclass(frozen=True)
class Schema:
    """The parameters a claim's code reads: [protocol] keys and, per control, that control's own keys."""

    protocol: Mapping[str, Any]
    controls: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def validate(claim: Claim, schema: Schema) -> None:
    """Raise ClaimError naming the file, the table, the key and the expected type for the first mismatch."""
    _check_table(claim.path, "protocol", claim.protocol, schema.protocol)
    for name, table in claim.controls.items():
        if name not in schema.controls:
            raise ClaimError(f"{claim.path}: [controls.{name}] is not a control this claim's code runs"
                             f"{_hint(name, schema.controls)}; its controls: {', '.join(schema.controls) or 'none'}")
        _check_table(claim.path, f"controls.{name}", table, {**CONTROL_KEYS, **schema.controls[name]})
    missing = [name for name in schema.controls if name not in claim.controls]
    if missing:
        raise ClaimError(f"{claim.path}: the claim's code runs control(s) {', '.join(missing)} but claim.toml has "
                         f"no [controls.{missing[0]}] table; add it (description, criterion and its parameters)")


def _hint(key: str, allowed: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(allowed), 1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_table(path: Path, where: str, table: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    for key, value in table.items():
        if key not in declared:
            raise ClaimError(f"{path}: [{where}] has unknown key {key!r}{_hint(key, declared)}; allowed: "
                             f"{', '.join(sorted(declared))}")
        if not matches(value, declared[key]):
            raise ClaimError(f"{path}: [{where}].{key} = {value!r} is {_kind(value)}; expected "
                             f"{describe(declared[key])}")
    missing = [k for k, t in declared.items() if k not in table and not optional(t)]
    if missing:
        raise ClaimError(f"{path}: [{where}] is missing {', '.join(missing)} "
                         f"({'; '.join(f'{k}: {describe(declared[k])}' for k in missing)})")


def optional(expected: Any) -> bool:
    return _is_union(expected) and type(None) in typing.get_args(expected)


def _is_union(expected: Any) -> bool:
    return typing.get_origin(expected) in (typing.Union, types.UnionType)


def matches(value: Any, expected: Any) -> bool:
    """Whether a TOML value has the declared type."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if _is_union(expected):
        return any(matches(value, a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and matches(v, args[1]) for k, v in value.items())
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def describe(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if _is_union(expected):
        kept = [describe(a) for a in args if a is not type(None)]
        return " or ".join(kept) + (" (optional)" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {describe(args[0])}"
    if origin is dict:
        return f"a table of {describe(args[1])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(expected, str(expected))


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


DType = typing.Literal["float16", "bfloat16", "float32"]
