"""Registers the claim-harness plugin when running from a checkout, and pytester for the plugin's own tests.

An installed package registers the plugin through its pytest11 entry point; registering the same module twice
is an error, so this file adds it only when no installed distribution declares it. It checks the entry points
without importing the plugin: a module imported before pytest registers it cannot be assertion-rewritten.

It also runs torch (and numpy's BLAS) single-threaded unless OMP_NUM_THREADS is set: the suite's models are
tiny, whose kernels gain nothing from a second thread, and on a shared two-core machine the threads' spin-waits
made tests/test_generation.py 25 times slower (346 s against 13.5 s, 2026-11-30). Set OMP_NUM_THREADS to
give a CPU run of full-size weights its cores back. The variable is set before torch is imported, and is
inherited by pytest-xdist workers and by the suite's own subprocesses.
"""

from __future__ import annotations

import os

from harness import plugin_installed

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["pytester"] if plugin_installed() else ["pytester", "harness.plugin"]
