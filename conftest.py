"""Registers the claim-harness plugin for this repository, and pytester for the plugin's own tests.

An installed package already registers the plugin through its pytest11 entry point; registering the same
module twice is an error, so this file only adds it when running from a checkout that is not installed.
"""

from __future__ import annotations

from importlib.metadata import entry_points

PLUGIN_INSTALLED = any(ep.value == "harness.plugin" for ep in entry_points(group="pytest11"))

pytest_plugins = ["pytester"] if PLUGIN_INSTALLED else ["pytester", "harness.plugin"]
