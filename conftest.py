"""Registers the claim-harness plugin for this repository, and pytester for the plugin's own tests.

An installed package already registers the plugin through its pytest11 entry point; registering the same
module twice is an error, so this file only adds it when running from a checkout that is not installed.
"""

from __future__ import annotations

from harness.plugin import registered_by_entry_point

pytest_plugins = ["pytester"] if registered_by_entry_point() else ["pytester", "harness.plugin"]
