"""Registers the claim-harness plugin when running from a checkout, and pytester for the plugin's own tests.

An installed package registers the plugin through its pytest11 entry point; registering the same module twice
is an error, so this file adds it only when no installed distribution declares it. It checks the entry points
without importing the plugin: a module imported before pytest registers it cannot be assertion-rewritten.
"""

from __future__ import annotations

from harness import plugin_installed

pytest_plugins = ["pytester"] if plugin_installed() else ["pytester", "harness.plugin"]
