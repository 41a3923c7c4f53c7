"""Registers the claim-harness plugin for this repository.

An installed package already registers it through its pytest11 entry point; registering the same module
twice is an error, so this file only adds it when running from a checkout that is not installed.
"""

from __future__ import annotations

from importlib.metadata import entry_points

_INSTALLED = any(ep.value == "harness.plugin" for ep in entry_points(group="pytest11"))

pytest_plugins = [] if _INSTALLED else ["harness.plugin"]
