"""harness/claimkit/context.py: the per-model sizes a claim's [protocol].sizes table gives, and the note that
says so in every result run at other than the published sizes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from harness.api import ModelContext

PROTOCOL = {"n_champions": 8, "n_random_slices": 16, "window": 16,
            "sizes": {"cpu": {"n_champions": 4, "n_random_slices": 6}, "stand_in": {"n_champions": 2}}}


def context(tiny: bool, cpu: bool, protocol: dict[str, Any] = PROTOCOL) -> ModelContext:
    claim = SimpleNamespace(protocol=protocol)
    lm = SimpleNamespace(spec=SimpleNamespace(tiny=tiny, cpu=cpu))
    return ModelContext(claim, lm, bank=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("tiny", "cpu", "champions", "slices"), [
    (False, False, 8, 16),  # a published model (or any GPU model): the published sizes
    (False, True, 4, 6),  # SmolLM2 under -m real
    (True, False, 2, 16),  # a tiny stand-in: only what stand_in overrides
])
def test_the_sizes_follow_the_model(tiny: bool, cpu: bool, champions: int, slices: int) -> None:
    params = context(tiny, cpu).params
    assert (params["n_champions"], params["n_random_slices"], params["window"]) == (champions, slices, 16)


def test_a_smaller_run_says_so_and_a_published_one_says_nothing() -> None:
    (note,) = context(False, True).size_notes()
    assert note == ("sized for a protocol check on this model: n_champions 4 (published 8), n_random_slices 6 "
                    "(published 16); the tables' `sizes`")
    assert context(False, False).size_notes() == ()
    assert context(False, True, {"window": 16}).size_notes() == ()  # no sizes table at all


def test_a_control_table_has_sizes_of_its_own() -> None:
    tables = {"grid": {"n_sources": 20, "n_targets": 20, "sizes": {"cpu": {"n_sources": 6}}}}
    claim = SimpleNamespace(protocol={"window": 16}, control=lambda name: tables[name])
    on_cpu = ModelContext(claim, SimpleNamespace(spec=SimpleNamespace(tiny=False, cpu=True)), bank=None)  # type: ignore[arg-type]
    on_gpu = ModelContext(claim, SimpleNamespace(spec=SimpleNamespace(tiny=False, cpu=False)), bank=None)  # type: ignore[arg-type]
    assert (on_cpu.control("grid")["n_sources"], on_cpu.control("grid")["n_targets"]) == (6, 20)
    assert on_gpu.control("grid")["n_sources"] == 20 and on_gpu.size_notes("grid") == ()
    assert on_cpu.size_notes("grid") == ("sized for a protocol check on this model: grid.n_sources 6 (published "
                                         "20); the tables' `sizes`",)
