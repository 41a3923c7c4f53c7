"""claim-harness: re-verify published mechanistic-interpretability claims, as published and under controls."""

from __future__ import annotations

__version__ = "0.1.0"
