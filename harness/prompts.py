"""Prompt banks: fixtures/prompts/<bank>.toml, replaceable from the command line, hashed into the report."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "prompts"


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


def bank_for(name: str, overrides: dict[str, Path] | None = None, claim_id: str | None = None) -> PromptBank:
    """The bank a claim uses: `--prompt-bank CLAIM=PATH` wins over fixtures/prompts/<name>.toml."""
    if overrides and claim_id in overrides:
        return load_bank(overrides[claim_id])
    return load_bank(PROMPTS_DIR / f"{name}.toml")
