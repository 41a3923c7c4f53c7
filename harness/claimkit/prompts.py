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
    except UnicodeDecodeError as err:
        raise BankError(f"prompt bank {path} is not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
                        "save the file as UTF-8") from err
    except tomllib.TOMLDecodeError as err:
        raise BankError(f"prompt bank {path} is not valid TOML ({err}); fix the syntax there") from err
    head, cats = raw.get("bank"), raw.get("categories")
    if not isinstance(head, dict) or not isinstance(cats, dict) or not cats:
        raise BankError(f"prompt bank {path} needs a [bank] table (id, version) and a non-empty [categories] table")
    for name, prompts in cats.items():
        if not isinstance(prompts, list) or not prompts:
            raise BankError(f"prompt bank {path}: category {name!r} is empty; give at least one prompt")
        bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
        if bad:
            raise BankError(f"prompt bank {path}: category {name!r} holds {len(bad)} empty or non-string prompt(s)")
        _check_unique(path, head, name, prompts)
    return PromptBank(str(head.get("id", path.stem)), int(head.get("version", 1)),
                      {k: tuple(v) for k, v in cats.items()}, path, hashlib.sha256(data).hexdigest())


def _check_unique(path: Path, head: dict[str, Any], category: str, prompts: list[str]) -> None:
    """A prompt listed twice in one category would be counted twice in every n: name the first one."""
    seen: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        key = prompt.strip()
        if key in seen:
            shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
            raise BankError(f"prompt bank {head.get('id', path.stem)!r} ({path}): category {category!r} lists the "
                            f"prompt {shown!r} twice (entries {seen[key] + 1} and {index + 1}); remove one copy, "
                            "or every count n includes it twice")
        seen[key] = index


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


def _named_categories(params: Mapping[str, Any]) -> list[str]:
    """Category names a [protocol] or [controls.*] table reads: `*_category`, `*_categories`, `categories`."""
    found: list[str] = []
    for key, value in params.items():
        if key.endswith("_category") and isinstance(value, str):
            found.append(value)
        elif (key.endswith("_categories") or key == "categories") and isinstance(value, list):
            found += [v for v in value if isinstance(v, str)]
    return found


def check_claim_banks(claim: Any, overrides: Mapping[str, Path] | None = None) -> PromptBank:
    """Load every bank a claim reads and check that each category its claim.toml names is there.

    Run once per claim at collection, so a bad bank is one error before any test, not one per test. The
    BankError says where the bank came from: the --prompt-bank option or the claim file's key.
    """
    given = overrides and claim.id in overrides
    origin = (f"given by --prompt-bank {claim.id}={overrides[claim.id]}" if given and overrides else
              f"named by {claim.path} [claim].prompt_bank = {claim.prompt_bank!r}")
    try:
        bank = bank_for(claim, overrides)
    except BankError as err:
        raise BankError(f"{err} ({origin})") from err
    tables = {"protocol": claim.protocol, **{f"controls.{k}": v for k, v in claim.controls.items()}}
    for where, params in tables.items():
        extra = []
        for name in params.get("banks", []):
            try:
                extra.append(find_bank(name, claim.folder))
            except BankError as err:
                raise BankError(f"{err} (named by {claim.path} [{where}].banks)") from err
        have = {c for b in (bank, *extra) for c in b.categories}
        missing = [c for c in _named_categories(params) if c not in have]
        if missing:
            raise BankError(f"{claim.path} [{where}] reads prompt categories {missing}, which the prompt bank "
                            f"{bank.path} ({origin}) lacks; it has: {', '.join(bank.categories)}. Add them to "
                            "the bank or name existing ones")
    return bank
