"""The claims catalogue (fixtures/catalogue.toml, harness/claimkit/catalogue.py) and the claim folders agree.

Every claims/<id> folder is the folder of an implemented entry, every folder and protocol an entry names exists,
and every entry that no folder judges says why. The validation names the file, the entry and the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.claimkit.catalogue import STATUSES, CatalogueError, Entry, disagreements, load_catalogue
from harness.claimkit.registry import load_claims
from harness.resources import catalogue_path


def test_the_catalogue_and_the_claim_folders_agree() -> None:
    assert disagreements(load_catalogue(), load_claims()) == []


def test_the_readme_lists_every_claim_of_the_catalogue() -> None:
    """Its claims table names every claim folder, and its catalogue table every entry no folder judges."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    named = {e.folder if e.status == "implemented" else e.id for e in load_catalogue()}
    assert sorted(n for n in named if f"`{n}`" not in readme) == []


def test_the_catalogue_covers_every_section_and_status_of_the_spec() -> None:
    entries = load_catalogue()
    assert len({e.id for e in entries}) == len(entries)
    sections = {e.spec.split(".")[0] + "." + e.spec.split(".")[1] for e in entries}
    assert {"A.1", "A.2", "A.3", "A.4", "A.5", "A.6", "A.7", "B.3"} <= sections
    assert {e.status for e in entries} == set(STATUSES)
    assert all(e.reason for e in entries if e.status not in ("implemented", "reported"))
    assert catalogue_path().is_file() and catalogue_path().parent.name == "fixtures"


def test_disagreements_name_the_unlisted_folder_the_missing_folder_and_the_unknown_protocol() -> None:
    claims = load_claims()
    entries = [Entry(c, "B.3", c, "implemented", c) for c in claims if c != "rv_contraction"]
    entries += [Entry("ghost", "A.9", "a claim with no folder", "implemented", "ghost"),
                Entry("odd", "A.2", "x", "reported", "rv_contraction", ("rederive", "control:nope", "as_coded"))]
    assert disagreements(entries, claims) == [
        "[claims.ghost] names folder 'ghost', which is not a claim folder",
        "[claims.odd] names protocol 'control:nope', which claims/rv_contraction/claim.toml does not declare",
        "claims/rv_contraction is not listed as implemented in the catalogue"]


@pytest.mark.parametrize(("table", "message"), [
    ('spec = "A.1"\ntitle = "t"\nstatus = "implemented"\n', r"\[claims.x\] is implemented but names no folder"),
    ('spec = "A.1"\ntitle = "t"\nstatus = "not_targeted"\n', r"\[claims.x\] is not_targeted: say why"),
    ('spec = "A.1"\ntitle = "t"\nstatus = "implemnted"\nfolder = "f"\n', r"did you mean 'implemented'"),
    ('spec = "A.1"\ntitle = "t"\nstatus = "reported"\nfolder = "f"\nwhy = "w"\n', r"unknown key\(s\) \['why'\]"),
    ('title = "t"\nstatus = "reported"\nfolder = "f"\n', r"\[claims.x\] is missing spec"),
])
def test_a_bad_entry_is_one_clear_error(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "catalogue.toml"
    path.write_text("[claims.x]\n" + table, encoding="utf-8")
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(path)
