"""The plugin's per-session state, kept in `config.stash` and built lazily (pytest-randomly's pattern)."""

from __future__ import annotations

import shutil
import signal
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.claimkit.prompts import PromptBank
    from harness.claimkit.registry import Claim
    from harness.plugin.options import Options

ITEM_KEY = "claim_harness.item"  # the user_property naming an item's (claim, protocol, model)
PLAN_KEY = "claim_harness.plan"  # a pytest-xdist worker's plan (nodeid -> item identity), on its first report


@dataclass
class State:
    config: pytest.Config
    claims: dict[str, Claim] = field(default_factory=dict)
    banks: dict[str, PromptBank] = field(default_factory=dict)  # claim id -> its checked prompt bank
    failures: dict[tuple[str, ...], str] = field(default_factory=dict)  # said once: key -> the first nodeid
    fitted: set[tuple[str, ...]] = field(default_factory=set)  # (bank, model) pairs whose prompts fit
    usage_errors: list[str] = field(default_factory=list)  # found while collecting, raised once it ends
    _options: Options | None = None

    def options(self) -> Options:
        """Built on first use: the model registry and the device count are read only when a claim needs them."""
        if self._options is None:
            from harness.plugin.options import build

            self._options = build(self.config)
            # the run's temporary folder goes when the session ends, also after Ctrl-C or SIGTERM
            self.config.add_cleanup(partial(shutil.rmtree, self._options.cache_dir, ignore_errors=True))
            interrupt_on_sigterm(self.config)
        return self._options


def interrupt_on_sigterm(config: pytest.Config) -> None:
    """Once a claim runs, SIGTERM ends the session as Ctrl-C does: pytest finishes it, the report is marked
    interrupted and temporary folders are removed. A second SIGTERM ends the process at once. Left alone
    where another handler is installed or outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return

    def interrupt(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}: the run was asked to stop")

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(restore_sigterm)


def restore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


state_key = pytest.StashKey[State]()


def state(config: pytest.Config) -> State:
    if state_key not in config.stash:
        config.stash[state_key] = State(config)
    return config.stash[state_key]
