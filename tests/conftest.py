"""Shared fixtures of the unit tests: the three tiny model families, built and loaded once per session.

Any test that takes `tiny_models` or `tiny_lm` is marked `tiny` at collection, so `-m "not tiny"` runs the
fast unit tier alone (see tests/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.engine.hooks import hook_count
from harness.engine.models import LoadedModel, load
from harness.engine.specs import get_spec

TINY_FAMILIES = ("tiny-mistral", "tiny-qwen2", "tiny-llama")
TINY_FIXTURES = {"tiny_models", "tiny_lm"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tiny: loads the tiny CPU models (built once per session, a few seconds)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TINY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tiny)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """tiny-mistral, tiny-qwen2 and tiny-llama, saved with save_pretrained and loaded back by models.load."""
    cache = tmp_path_factory.mktemp("tiny")
    return {model_id: load(get_spec(model_id), cache_dir=cache) for model_id in TINY_FAMILIES}


@pytest.fixture(params=TINY_FAMILIES)
def tiny_lm(request: pytest.FixtureRequest, tiny_models: dict[str, LoadedModel]) -> Iterator[LoadedModel]:
    """Each tiny family in turn; fails the test if it leaves a hook on the shared model."""
    lm = tiny_models[request.param]
    assert hook_count(lm.model) == 0, f"{lm.id} already holds hooks before the test"
    yield lm
    assert hook_count(lm.model) == 0, f"{lm.id}: the test left {hook_count(lm.model)} hook(s) behind"
