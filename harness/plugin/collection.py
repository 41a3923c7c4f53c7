"""Collection: which claim a test module verifies, which models it runs on, and what each item records.

A claim is a folder: a test module marked `@pytest.mark.claim(id)` finds `claim.toml` beside itself. Claims
named by modules elsewhere come from `--claims-dir` or from the seed claims that ship with the harness. Claim
files are read and validated when the first module naming them is collected, never before, so a pytest
session that selects no claim reads nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.plugin.state import ITEM_KEY, state

if TYPE_CHECKING:
    from harness.claimkit.params import Schema
    from harness.claimkit.prompts import PromptBank
    from harness.claimkit.registry import Claim
    from harness.engine.specs import ModelSpec
    from harness.plugin.options import Options


def claim_of(config: pytest.Config, claim_id: str, module_file: str | None, schema: Schema | None = None) -> Claim:
    """The claim a module names: its own folder's claim.toml first, then --claims-dir, then the seed claims.

    With the `schema` the module's marker declares, the claim's [protocol] and [controls.*] tables are checked
    against it (typed parameters) before any test of the claim runs.
    """
    from harness.claimkit.params import validate
    from harness.claimkit.registry import ClaimError, get_claim, load_claim, load_claims

    known = state(config).claims
    if claim_id in known:
        return known[claim_id]
    local = Path(module_file).parent / "claim.toml" if module_file else None
    try:
        if local is not None and local.is_file() and local.parent.name == claim_id:
            claim = load_claim(local)
        else:
            given = config.getoption("--claims-dir")
            pool = load_claims(Path(given)) if given else {}
            claim = get_claim(claim_id, {**load_claims(), **pool})
        if schema is not None:
            validate(claim, schema)
    except ClaimError as err:  # a collection error of this module, shown as the message alone (no traceback)
        raise pytest.Collector.CollectError(str(err)) from err
    known[claim.id] = claim
    return claim


def claim_bank(config: pytest.Config, claim: Claim) -> PromptBank:
    """The claim's prompt bank, loaded and checked once per run: a bad bank is one usage error at collection,
    not one traceback per test."""
    from harness.claimkit.prompts import BankError, check_claim_banks

    banks = state(config).banks
    if claim.id not in banks:
        try:
            banks[claim.id] = check_claim_banks(claim, state(config).options().prompt_banks)
        except BankError as err:
            raise pytest.UsageError(str(err)) from err
    return banks[claim.id]


def applicable_models(claim: Claim, opts: Options) -> list[str]:
    """Selected models this claim runs on: its published models, tiny stand-ins of the same variant, and the
    models the user chose (Options.generalise) that offer what the claim needs. A claim on published data
    alone (`needs = "published_data"`) runs on no model."""
    if claim.needs == "published_data":
        return []
    variants = {opts.registry[m].variant for m in claim.models if m in opts.registry}
    chosen = []
    for model_id in opts.models:
        spec = opts.registry[model_id]
        if spec.tiny:
            stand_in = model_id in claim.tiny_models if claim.tiny_models is not None else spec.variant in variants
        else:
            stand_in = False
        generalises = model_id in opts.generalise and (claim.needs == "model" or spec.base is not None)
        if model_id in claim.models or stand_in or generalises:
            chosen.append(model_id)
    return chosen


def model_marks(spec: ModelSpec) -> tuple[pytest.MarkDecorator, ...]:
    """`gpu` on the published models, `real` on real weights small enough for the CPU; a user's model and the
    tiny stand-ins run wherever --device says. Every test of one model runs on one xdist worker."""
    tier = () if spec.tiny or spec.origin != "registry" else (pytest.mark.real,) if spec.cpu else (pytest.mark.gpu,)
    return (*tier, pytest.mark.xdist_group(spec.id))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize a claim test over its models. A usage error found here (a bad claim file, bank or option)
    is kept and raised once collection ends: one message, not a collection error with a traceback."""
    try:
        parametrize(metafunc)
    except pytest.UsageError as err:
        found = state(metafunc.config).usage_errors
        found.extend(line for line in err.args if line not in found)


def parametrize(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("claim")
    if marker is None:
        if "model_id" in metafunc.fixturenames:
            raise pytest.UsageError(f"{metafunc.definition.nodeid} takes model_id but has no "
                                    "@pytest.mark.claim(id)")
        return
    claim = claim_of(metafunc.config, marker.args[0], getattr(metafunc.module, "__file__", None),
                     marker.kwargs.get("schema"))
    if "prompt_bank" in metafunc.fixturenames:
        claim_bank(metafunc.config, claim)
    if "model_id" not in metafunc.fixturenames:
        return
    opts = state(metafunc.config).options()
    # xdist_group (for --dist loadgroup): every test of one model runs on one worker, which loads it once. Set
    # on the parameter, so the mark exists before any plugin's collection hook reads it.
    params = [pytest.param(m, marks=model_marks(opts.registry[m]), id=m) for m in applicable_models(claim, opts)]
    metafunc.parametrize("model_id", params, scope="session", indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Name each claim item's (claim, protocol, model, kind) and what its claim declares; deselect the
    protocols skipped on purpose (--skip-control) and the null-weights check when opted out."""
    if state(config).usage_errors:  # found while parametrizing: one usage error, said once
        raise pytest.UsageError(*state(config).usage_errors)
    claim_items = [item for item in items if item.get_closest_marker("claim") is not None]
    if not claim_items:
        return
    opts = state(config).options()
    _check_skips(config, opts)
    dropped: list[pytest.Item] = []
    for item in claim_items:
        ident = identify(config, item, opts)
        item.user_properties.append((ITEM_KEY, ident))
        if _skipped(ident, opts):
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(dropped)
        items[:] = [item for item in items if item not in gone]


def identify(config: pytest.Config, item: pytest.Item, opts: Options) -> dict[str, Any]:
    from harness.claimkit.declare import declared, protocol_kind

    marker = item.get_closest_marker("claim")
    assert marker is not None
    params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    protocol = str(params.get("protocol") or item.originalname.removeprefix("test_"))  # type: ignore[attr-defined]
    raw = params.get("model_id", "published-data")
    model = raw if isinstance(raw, str) else "no-model-selected"  # pytest's NOTSET for an empty selection
    claim = state(config).claims.get(marker.args[0])
    ident: dict[str, Any] = {"claim": marker.args[0], "protocol": protocol, "model": model,
                             "kind": protocol_kind(claim, protocol)}
    if claim is not None:
        ident["declared"] = declared(claim, model_based="model_id" in params,
                                     skipped=opts.skip_controls.get(claim.id, ()),
                                     null_weights=opts.null_weights).as_dict()
    return ident


def _skipped(ident: dict[str, Any], opts: Options) -> bool:
    from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL

    if ident["protocol"] == NULL_WEIGHTS_PROTOCOL and not opts.null_weights:
        return True
    _, sep, name = ident["protocol"].partition(":")
    return bool(sep) and name in opts.skip_controls.get(ident["claim"], ())


def _check_skips(config: pytest.Config, opts: Options) -> None:
    """Every --skip-control names a known claim and one of its controls (else a usage error with a hint)."""
    from harness.claimkit.declare import check_skipped
    from harness.claimkit.registry import ClaimError, get_claim, load_claims

    known = state(config).claims
    for claim_id, names in opts.skip_controls.items():
        try:
            if claim_id in known:
                claim = known[claim_id]
            else:
                given = config.getoption("--claims-dir")
                claim = get_claim(claim_id, {**load_claims(), **(load_claims(Path(given)) if given else {})})
            check_skipped(claim, names)
        except ClaimError as err:
            raise pytest.UsageError(f"--skip-control: {err}") from err


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before any model loads: the report must be writable where it will go (when a claim is to run)."""
    if session.config.option.collectonly or not any(i.get_closest_marker("claim") for i in session.items):
        return
    from harness.plugin.options import check_report_paths

    check_report_paths(session.config)
