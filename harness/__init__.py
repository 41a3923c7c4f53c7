"""claim-harness: re-verify published mechanistic-interpretability claims, as published and under controls."""

from __future__ import annotations

__version__ = "0.1.0"


def plugin_installed() -> bool:
    """Whether an installed distribution registers the pytest plugin (pytest11 entry point `harness.plugin`).

    Reads package metadata only: the plugin module itself must not be imported before pytest registers it.
    """
    from importlib.metadata import entry_points

    return any(ep.value == "harness.plugin" for ep in entry_points(group="pytest11"))
