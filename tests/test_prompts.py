"""Unit tests of harness/prompts.py: loading prompt banks, their errors, hashes and command-line overrides.

The contents of the project's banks are tested in test_prompt_banks.py; this file tests the loader.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness.claimkit.prompts import PROMPTS_DIR, BankError, bank_for, bank_path, find_bank, load_bank
from harness.claimkit.registry import get_claim, load_claims

BANK = """[bank]
id = "demo"
version = 2

[categories]
recursive = ["Notice the noticing.", "Watch the watcher."]
baseline = ["The capital of France is"]
"""


def write(directory: Path, text: str, name: str = "demo.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_project_bank_loads_with_its_file_hash() -> None:
    paths = sorted(PROMPTS_DIR.glob("*.toml")) + [bank_for(claim).path for claim in load_claims().values()]
    assert len(paths) >= 5
    for path in paths:
        bank = load_bank(path)
        assert bank.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert all(bank.categories.values())


def test_a_bank_loads_its_categories_in_order(tmp_path: Path) -> None:
    bank = load_bank(write(tmp_path, BANK))
    assert (bank.id, bank.version) == ("demo", 2)
    assert list(bank.categories) == ["recursive", "baseline"]
    assert bank.category("recursive") == ["Notice the noticing.", "Watch the watcher."]
    assert bank.describe() == {
        "id": "demo",
        "version": 2,
        "path": str(tmp_path / "demo.toml"),
        "sha256": bank.sha256,
        "sizes": {"recursive": 2, "baseline": 1},
    }


def test_id_and_version_default_to_file_name_and_one(tmp_path: Path) -> None:
    bank = load_bank(
        write(tmp_path, BANK.replace('id = "demo"\nversion = 2\n', 'description = "x"\n'), "mine.toml")
    )
    assert (bank.id, bank.version) == ("mine", 1)


def test_category_returns_a_copy(tmp_path: Path) -> None:
    bank = load_bank(write(tmp_path, BANK))
    bank.category("baseline").append("changed")
    assert bank.category("baseline") == ["The capital of France is"]


# --- errors name the path ---------------------------------------------------------------------------------


def test_missing_file_names_the_path_and_the_format(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(
        BankError,
        match=rf"prompt bank {path} does not exist; give a TOML file in the format of "
        rf"{PROMPTS_DIR}",
    ):
        load_bank(path)


@pytest.mark.parametrize("text", ["[bank\nid = 'x'\n", '[categories]\nrecursive = ["a"\n'])
def test_bad_toml_names_the_path(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(BankError, match=rf"prompt bank {path} is not valid TOML \(.+\); fix the syntax there"):
        load_bank(path)


def test_non_utf8_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(BANK.replace("France", "Fran\u00e7e").encode("latin-1"))
    with pytest.raises(BankError, match=rf"prompt bank {path} is not UTF-8 \(byte 0xe7 at offset \d+\); save the "
                                        "file as UTF-8"):
        load_bank(path)


@pytest.mark.parametrize(
    "text", ['[bank]\nid = "x"\n', '[categories]\na = ["x"]\n', '[bank]\nid = "x"\n[categories]\n']
)
def test_missing_tables_name_the_path(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(
        BankError,
        match=rf"prompt bank {path} needs a \[bank\] table \(id, version\) and a "
        r"non-empty \[categories\] table",
    ):
        load_bank(path)


def test_empty_category_names_the_path_and_the_category(tmp_path: Path) -> None:
    path = write(tmp_path, BANK.replace('baseline = ["The capital of France is"]', "baseline = []"))
    with pytest.raises(BankError, match=rf"prompt bank {path}: category 'baseline' is empty"):
        load_bank(path)


def test_blank_or_non_string_prompts_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, BANK.replace('["The capital of France is"]', '["ok", "  ", 3]'))
    with pytest.raises(
        BankError, match=rf"prompt bank {path}: category 'baseline' holds 2 empty or non-string"
    ):
        load_bank(path)


def test_unknown_category_lists_the_categories(tmp_path: Path) -> None:
    bank = load_bank(write(tmp_path, BANK))
    with pytest.raises(BankError, match=r"has no category 'control'; it has: recursive, baseline"):
        bank.category("control")


# --- hashes -----------------------------------------------------------------------------------------------


def test_sha256_follows_the_bytes(tmp_path: Path) -> None:
    original = load_bank(write(tmp_path, BANK)).sha256
    assert load_bank(write(tmp_path, BANK, "copy.toml")).sha256 == original
    assert load_bank(write(tmp_path, BANK.replace("Watch", "See"), "edited.toml")).sha256 != original
    assert load_bank(write(tmp_path, "# a comment\n" + BANK, "commented.toml")).sha256 != original


# --- overrides --------------------------------------------------------------------------------------------


def test_bank_for_uses_the_bank_in_the_claim_folder() -> None:
    claim = get_claim("rv_contraction")
    bank = bank_for(claim)
    assert bank.path == claim.folder / "prompts.toml" and bank.id == "rv_contraction"
    assert bank_for(claim, {}).sha256 == bank.sha256


def test_a_bank_missing_from_the_claim_folder_is_a_shared_bank() -> None:
    claim = get_claim("rfc_instruct_compresses_mistral")
    assert bank_for(claim).path == PROMPTS_DIR / "role_conditioning.toml"
    assert bank_path("role_conditioning", claim.folder) == PROMPTS_DIR / "role_conditioning.toml"


def test_bank_for_override_wins_for_its_claim_only(tmp_path: Path) -> None:
    path = write(tmp_path, BANK)
    overrides = {"rv_contraction": path}
    assert bank_for(get_claim("rv_contraction"), overrides).path == path
    other = get_claim("l31_ablation_repetition")
    assert bank_for(other, overrides).path == other.folder / "prompts.toml"


def test_bank_for_override_that_is_missing_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(BankError, match=rf"prompt bank {tmp_path / 'gone.toml'} does not exist"):
        bank_for(get_claim("rv_contraction"), {"rv_contraction": tmp_path / "gone.toml"})


def test_an_unknown_bank_name_names_the_expected_path() -> None:
    with pytest.raises(BankError, match=rf"prompt bank {PROMPTS_DIR / 'no_such_bank.toml'} does not exist"):
        find_bank("no_such_bank")


@pytest.mark.parametrize("copy", ["Notice the noticing.", "  Notice the noticing. "])
def test_a_prompt_listed_twice_in_a_category_is_an_error_naming_it(tmp_path: Path, copy: str) -> None:
    path = write(tmp_path, BANK.replace('"Watch the watcher."', f'"Watch the watcher.", "{copy}"'))
    with pytest.raises(BankError, match=r"prompt bank 'demo' \(.*demo.toml\): category 'recursive' lists the "
                                         r"prompt '.*Notice the noticing\. ?' twice \(entries 1 and 3\)"):
        load_bank(path)


def test_the_same_prompt_in_two_categories_is_allowed(tmp_path: Path) -> None:
    bank = load_bank(write(tmp_path, BANK.replace('"The capital of France is"', '"Watch the watcher."')))
    assert bank.category("baseline") == ["Watch the watcher."]


def test_the_categories_a_claim_names_must_be_in_its_bank(tmp_path: Path) -> None:
    from harness.claimkit.prompts import check_claim_banks

    claim = get_claim("rv_contraction")
    assert set(check_claim_banks(claim).categories) >= {"recursive", "baseline"}
    path = write(tmp_path, BANK.replace("baseline =", "other ="))
    with pytest.raises(BankError, match=r"\[protocol\] reads prompt categories \['baseline'\].*given by "
                                         r"--prompt-bank rv_contraction="):
        check_claim_banks(claim, {"rv_contraction": path})
