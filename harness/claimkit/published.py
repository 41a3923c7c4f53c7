"""The sources' published tables: located, and checked against the manifest they were vendored with.

`fixtures/published/MANIFEST.toml` records each table's source repository, commit, path, licence and sha256.
A re-derivation reads a table only through `verified_table`, so a missing or altered table is an error that
names the file and the fix, never a silent skip or a figure computed from different data.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.toml"


class PublishedDataError(ValueError):
    """A published table that is missing, or differs from the manifest's sha256."""


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's entries by file name; {} for a folder that keeps none (--published-dir of your own)."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    return dict(tomllib.loads(path.read_text(encoding="utf-8")).get("files", {}))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verified_table(folder: Path, name: str) -> Path:
    """`folder/name`, after checking it exists and, where the folder keeps a manifest, that it is unaltered."""
    path = folder / name
    if not path.is_file():
        raise PublishedDataError(f"published table {name} not found in {folder}; the harness ships it in "
                                 "fixtures/published/ (reinstall, or restore it from git), or pass --published-dir")
    entry = manifest(folder).get(name)
    if entry is not None and sha256(path) != entry["sha256"]:
        raise PublishedDataError(f"published table {path} differs from the copy vendored from {entry['repository']}"
                                 f"@{entry['commit']}:{entry['path']} (sha256 {sha256(path)[:12]}..., manifest "
                                 f"{entry['sha256'][:12]}...); restore it with git, or pass --published-dir for "
                                 "a table of your own")
    return path
