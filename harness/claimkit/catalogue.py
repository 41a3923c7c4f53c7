"""The claims catalogue (fixtures/catalogue.toml): every claim the sources make, and what the harness does with it.

One `[claims.<id>]` table per claim of claims-spec.md, with its spec section, a title and a status:
`implemented` (a claim folder judges it), `reported` (a folder's protocol reports its figures, no criterion
judges them), `not_rederivable`, `narrative_only` or `not_targeted` (each with its `reason`). `disagreements`
compares the catalogue with the claim folders: every folder must be some implemented entry's, and every folder
and protocol an entry names must exist.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.claimkit.declare import protocol_of
from harness.claimkit.registry import Claim
from harness.resources import catalogue_path

STATUSES = ("implemented", "reported", "not_rederivable", "narrative_only", "not_targeted")
WITH_FOLDER = ("implemented", "reported")  # the statuses that name a claim folder; the others give a reason
REQUIRED = {"spec", "title", "status"}
OPTIONAL = {"folder", "protocols", "reason", "note"}


class CatalogueError(ValueError):
    """A catalogue entry that does not validate; the message names the file, the entry, the key and the fix."""


@dataclass(frozen=True)
class Entry:
    id: str
    spec: str
    title: str
    status: str
    folder: str | None = None
    protocols: tuple[str, ...] = ()
    reason: str | None = None
    note: str | None = None


def _entry(path: Path, name: str, raw: Mapping[str, Any]) -> Entry:
    where = f"{path}: [claims.{name}]"
    unknown = set(raw) - REQUIRED - OPTIONAL
    if unknown:
        raise CatalogueError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(REQUIRED | OPTIONAL)}")
    missing = REQUIRED - set(raw)
    if missing:
        raise CatalogueError(f"{where} is missing {', '.join(sorted(missing))}")
    status = raw["status"]
    if status not in STATUSES:
        close = difflib.get_close_matches(str(status), STATUSES, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CatalogueError(f"{where}.status = {status!r}{hint}; allowed: {', '.join(STATUSES)}")
    if status in WITH_FOLDER and not raw.get("folder"):
        raise CatalogueError(f"{where} is {status} but names no folder; add folder = \"<claim id>\"")
    if status not in WITH_FOLDER and not raw.get("reason"):
        raise CatalogueError(f"{where} is {status}: say why in reason = \"...\"")
    return Entry(name, str(raw["spec"]), str(raw["title"]), status, raw.get("folder"),
                 tuple(raw.get("protocols", ())), raw.get("reason"), raw.get("note"))


def load_catalogue(path: Path | None = None) -> list[Entry]:
    """The catalogue's entries in file order (the shipped catalogue by default)."""
    source = path or catalogue_path()
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise CatalogueError(f"{source} is not valid TOML ({err})") from err
    if not isinstance(raw.get("claims"), dict) or not raw["claims"]:
        raise CatalogueError(f"{source} holds no [claims.<id>] tables")
    return [_entry(source, name, table) for name, table in raw["claims"].items()]


def _declares(claim: Claim, protocol: str) -> bool:
    """Whether claim.toml declares `protocol`: a criterion's name, or `<kind>:<name>` of a [controls] table."""
    _, sep, name = protocol.partition(":")
    if not sep:
        return protocol in claim.criteria
    return name in claim.controls and protocol_of(claim, name) == protocol


def disagreements(entries: Iterable[Entry], claims: Mapping[str, Claim]) -> list[str]:
    """Where the catalogue and the claim folders disagree, one sentence each (empty when they agree)."""
    entries = list(entries)
    problems = [f"[claims.{e.id}] names folder {e.folder!r}, which is not a claim folder"
                for e in entries if e.folder is not None and e.folder not in claims]
    problems += [f"[claims.{e.id}] names protocol {p!r}, which claims/{e.folder}/claim.toml does not declare"
                 for e in entries if e.folder is not None and e.folder in claims
                 for p in e.protocols if not _declares(claims[e.folder], p)]
    implemented = {e.folder for e in entries if e.status == "implemented"}
    problems += [f"claims/{c} is not listed as implemented in the catalogue" for c in sorted(claims)
                 if c not in implemented]
    return problems
