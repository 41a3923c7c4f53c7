"""The plugin's per-session state, kept in `config.stash` and built lazily (pytest-randomly's pattern)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.claimkit.registry import Claim
    from harness.plugin.options import Options

ITEM_KEY = "claim_harness.item"  # the user_property naming an item's (claim, protocol, model)


@dataclass
class State:
    config: pytest.Config
    claims: dict[str, Claim] = field(default_factory=dict)
    _options: Options | None = None

    def options(self) -> Options:
        """Built on first use: the model registry and the device count are read only when a claim needs them."""
        if self._options is None:
            from harness.plugin.options import build

            self._options = build(self.config)
        return self._options


state_key = pytest.StashKey[State]()


def state(config: pytest.Config) -> State:
    if state_key not in config.stash:
        config.stash[state_key] = State(config)
    return config.stash[state_key]
