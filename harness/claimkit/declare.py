"""What a claim declares, read from claim.toml: its protocols by kind, and the names its results carry.

Every `[controls.<name>]` table is one protocol of the kind its `kind` key names (default `control`):
`control` (one check against one artefact, counted), `robustness` (reported beside, never counted) or `null`
(the as-published criterion under its own null) or `measure` (descriptive, for a claim with no published
figure). Its protocol is named `<kind>:<name>`, e.g.
`control:token_matched`, `robustness:permutation`, `null:detector_on_unablated`. The null-weights check,
`null:random_weights`, is declared for every model-based claim unless the run opts out of it. A claim with
`needs = "published_data"` runs every protocol on the source's published tables (model `published-data`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from harness.claimkit.registry import Claim, ClaimError
from harness.claimkit.verdicts import KINDS, Declared

TABLE_KINDS = ("control", "robustness", "null", "measure")
NULL_WEIGHTS = "random_weights"
NULL_WEIGHTS_PROTOCOL = f"null:{NULL_WEIGHTS}"


def table_kind(claim: Claim, name: str) -> str:
    """The kind of `[controls.<name>]`: its `kind` key, `control` when absent."""
    kind = str(claim.control(name).get("kind", "control"))
    if kind not in TABLE_KINDS:
        raise ClaimError(f"{claim.path}: [controls.{name}].kind = {kind!r}; allowed: {', '.join(TABLE_KINDS)}")
    return kind


def protocol_of(claim: Claim, name: str) -> str:
    """The protocol name of `[controls.<name>]`: `<kind>:<name>`."""
    return f"{table_kind(claim, name)}:{name}"


def protocol_kind(claim: Claim | None, protocol: str) -> str:
    """The kind of a protocol from its name: `<kind>:<name>`, `rederive...`, `measure...`, else as_published.

    A `control:<name>` of a claim whose table says otherwise takes the table's kind (a test id written before
    the table's kind changed).
    """
    prefix, sep, name = protocol.partition(":")
    if sep and prefix in KINDS:
        if claim is not None and prefix in TABLE_KINDS and name in claim.controls:
            return table_kind(claim, name)
        return prefix
    for kind in ("rederive", "measure"):
        if protocol.startswith(kind):
            return kind
    return "as_published"


def check_skipped(claim: Claim, names: Iterable[str]) -> None:
    """ClaimError naming the first of `names` that is no control, null or robustness check of `claim`."""
    known = [*claim.controls, NULL_WEIGHTS]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ClaimError(f"--skip-control {claim.id}.{name}: claim {claim.id!r} has no control {name!r}{hint}; "
                             f"its controls, nulls and robustness checks: {', '.join(known)}")


def declared(claim: Claim, *, model_based: bool = True, skipped: Iterable[str] = (),
             null_weights: bool = True) -> Declared:
    """The protocols `claim` declares for one model (or for the published data alone, `model_based=False`).

    `skipped` holds the control names the user skipped on purpose (`--skip-control CLAIM.NAME`) for this
    claim; `null_weights` says whether the null-weights check was asked for. On the published data a claim
    that runs on a model declares only its re-derivations; a claim that needs no model (`needs =
    "published_data"`) declares everything there, and has no null-weights check (there are no weights).
    """
    data_only = claim.needs == "published_data"
    if not model_based and not data_only:
        return Declared(as_published=tuple(c for c in claim.criteria if c.startswith("rederive")))
    by_kind: dict[str, list[str]] = {kind: [] for kind in TABLE_KINDS}
    for name in claim.controls:
        by_kind[table_kind(claim, name)].append(name)
    published = tuple(c for c in claim.criteria if not c.startswith("rederive") and not c.startswith("measure"))
    # a descriptive claim has no criterion to run on a null; a claim on published data has no weights
    null_weights = null_weights and bool(published) and not data_only
    nulls = [*by_kind["null"], *([NULL_WEIGHTS] if null_weights else [])]
    chosen = tuple(name for name in skipped if name in claim.controls or (name == NULL_WEIGHTS and null_weights))
    return Declared(as_published=published,
                    controls=tuple(by_kind["control"]), robustness=tuple(by_kind["robustness"]),
                    nulls=tuple(nulls), skipped_on_purpose=chosen, null_weights=null_weights)
