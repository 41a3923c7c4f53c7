"""The public API (harness/api.py): every exported name exists, is documented in the module docstring, and is
the object of the module it comes from, so a claim written against `harness.api` runs the real thing."""

from __future__ import annotations

import importlib
import re
import typing

import pytest

from harness import api
from harness.claimkit import params, results
from harness.engine import sites

EXPECTED_SUBSET = {"protocol_result", "check", "Claim", "PromptBank", "capture", "edit_site", "resolve_site",
                   "map_layer", "forward_capture", "generate", "attention_entropy", "patch_residual", "stats",
                   "participation_ratio", "measure_rv", "measure_entropies", "LoadedModel"}


def test_the_exports_are_unique_and_cover_what_a_claim_needs() -> None:
    assert len(api.__all__) == len(set(api.__all__))
    assert set(api.__all__) >= EXPECTED_SUBSET


@pytest.mark.parametrize("name", api.__all__)
def test_each_export_exists_and_is_documented(name: str) -> None:
    assert hasattr(api, name), name
    doc = api.__doc__ or ""
    assert re.search(rf"\b{re.escape(name)}\b", doc), f"{name} is exported but not described in harness/api.py"


@pytest.mark.parametrize("name", [n for n in api.__all__
                                  if callable(getattr(api, n)) and typing.get_origin(getattr(api, n)) is None])
def test_each_export_is_the_internal_object_itself(name: str) -> None:
    obj = getattr(api, name)
    module = importlib.import_module(obj.__module__)
    assert module.__name__.startswith("harness."), name
    assert any(value is obj for value in vars(module).values()), f"{name} is not {module.__name__}'s own object"


def test_aliases_point_at_the_documented_functions() -> None:
    assert api.DType is params.DType  # a typing alias: it has no module of its own to be found in
    assert api.resolve_site is sites.resolve and api.parse_site is sites.parse and api.SITE_POINTS is sites.POINTS
    assert api.check is results.check and api.protocol_result is results.protocol_result
