"""Where the data the harness ships lives: found through importlib.resources, never relative to a source tree.

The wheel carries `harness/fixtures/` (model registry and architectures, shared prompt banks, the sources'
published tables with their manifest, the claims catalogue) and the seed claims in the `claims` package. In a checkout,
`harness/fixtures` is a link to the top-level `fixtures/` folder, so both read the same files.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def fixtures_dir() -> Path:
    return Path(str(files("harness").joinpath("fixtures")))


def models_dir() -> Path:
    """The model registry (registry.toml) and the architecture files of every registered model."""
    return fixtures_dir() / "models"


def shared_banks_dir() -> Path:
    """Prompt banks that several claims share (a claim's own bank lives in its folder)."""
    return fixtures_dir() / "prompts"


def published_dir() -> Path:
    """The sources' published data tables, vendored with MANIFEST.toml (repository, commit, path, licence, sha256)."""
    return fixtures_dir() / "published"


def catalogue_path() -> Path:
    """The claims catalogue: every claim of the sources and what the harness does with it."""
    return fixtures_dir() / "catalogue.toml"


def seed_claims_dir() -> Path:
    """The claims this project ships: one folder per claim in the `claims` package."""
    return Path(str(files("claims")))
