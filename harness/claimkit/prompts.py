"""Prompt banks: a claim's own bank in its folder, or a shared bank; replaceable from the command line, hashed
into the report.

A claim names its bank (`prompt_bank = "prompts"` in claim.toml): `<claim folder>/<name>.toml` is used when it
exists, else the shared bank `<name>.toml` that ships with the harness (fixtures/prompts/).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.resources import shared_banks_dir

PROMPTS_DIR = shared_banks_dir()


class BankError(ValueError):
    """A prompt bank that is missing, malformed or lacks a category a protocol needs."""


@dataclass(frozen=True)
class PromptBank:
    id: str
    version: int
    categories: dict[str, tuple[str, ...]]
    path: Path
    sha256: str

    def category(self, name: str) -> list[str]:
        if name not in self.categories:
            raise BankError(f"prompt bank {self.path} has no category {name!r}; it has: "
                            f"{', '.join(self.categories)}")
        return list(self.categories[name])

    def describe(self) -> dict[str, object]:
        return {"id": self.id, "version": self.version, "path": str(self.path), "sha256": self.sha256,
                "sizes": {k: len(v) for k, v in self.categories.items()}}


def load_bank(path: Path) -> PromptBank:
    if not path.is_file():
        raise BankError(f"prompt bank {path} does not exist; give a TOML file in the format of {PROMPTS_DIR}")
    data = path.read_bytes()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BankError(f"prompt bank {path} is not valid UTF-8 TOML ({err})") from err
    head, cats = raw.get("bank"), raw.get("categories")
    if not isinstance(head, dict) or not isinstance(cats, dict) or not cats:
        raise BankError(f"prompt bank {path} needs a [bank] table (id, version) and a non-empty [categories] table")
    for name, prompts in cats.items():
        if not isinstance(prompts, list) or not prompts:
            raise BankError(f"prompt bank {path}: category {name!r} is empty; give at least one prompt")
        bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
        if bad:
            raise BankError(f"prompt bank {path}: category {name!r} holds {len(bad)} empty or non-string prompt(s)")
    return PromptBank(str(head.get("id", path.stem)), int(head.get("version", 1)),
                      {k: tuple(v) for k, v in cats.items()}, path, hashlib.sha256(data).hexdigest())


def bank_path(name: str, folder: Path | None = None) -> Path:
    """`<folder>/<name>.toml` when a claim folder holds it, else the shared bank of that name."""
    local = folder / f"{name}.toml" if folder is not None else None
    return local if local is not None and local.is_file() else PROMPTS_DIR / f"{name}.toml"


def find_bank(name: str, folder: Path | None = None) -> PromptBank:
    return load_bank(bank_path(name, folder))


def bank_for(claim: Any, overrides: Mapping[str, Path] | None = None) -> PromptBank:
    """The bank a claim uses: `--prompt-bank CLAIM=PATH` wins over the bank its claim.toml names."""
    if overrides and claim.id in overrides:
        return load_bank(overrides[claim.id])
    return find_bank(claim.prompt_bank, claim.folder)
