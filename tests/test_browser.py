"""The claims page as a person sees it, in headless Chromium (Debian's `chromium`, installed by .ci/run).

Checks that the page loads with no console errors, that every figure is decoded and laid out with a non-zero
size, and that the verdict grid lists every (claim, model) of the report; saves a screenshot as
results/claims-page.png. A deliberately broken page shows that each check can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cpu_suite import ROOT, SuiteRun, cpu_suite_run

from harness.report.browser import CHROMIUM, INSTALL, PageCheck, chromium, inspect_page

# slow: about 13 s (a browser start and a page render); the CI's slow tier runs it.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(chromium() is None,
                                                   reason=f"needs Chromium at {CHROMIUM}; install it: {INSTALL}")]

SCREENSHOT = ROOT / "results" / "claims-page.png"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    return cpu_suite_run(tmp_path_factory)


@pytest.fixture(scope="module")
def seen(suite: SuiteRun) -> PageCheck:
    return inspect_page(suite.html_path)


def test_the_page_loads_without_console_errors(seen: PageCheck) -> None:
    assert seen.errors == []


def test_every_figure_is_decoded_and_laid_out(suite: SuiteRun, seen: PageCheck) -> None:
    expected = suite.html_path.read_text(encoding="utf-8").count("<img ")
    assert expected > 0 and len(seen.images) == expected
    for img in seen.images:
        assert img["decoded"], img["alt"]
        assert min(img["natural"]) > 0 and min(img["box"]) > 0, img


def test_the_grid_lists_every_claim_and_model(suite: SuiteRun, seen: PageCheck) -> None:
    verdicts = suite.document()["verdicts"]
    assert sorted(seen.grid) == sorted([v["claim"], v["model"], v["verdict"]] for v in verdicts)


def test_a_screenshot_is_saved_under_results(seen: PageCheck) -> None:
    assert seen.screenshot.startswith(b"\x89PNG\r\n\x1a\n") and len(seen.screenshot) > 20_000
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(seen.screenshot)


def test_the_checks_see_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head><body>"
                    "<img src='missing.png' alt='gone'>"
                    "<script>console.error('boom'); undefined_call();</script></body></html>",
                    encoding="utf-8")
    seen = inspect_page(page, width=400, height=300)
    assert any("boom" in e for e in seen.errors) and any("undefined_call" in e for e in seen.errors)
    assert any("missing.png" in e for e in seen.errors)
    assert seen.images == [{"alt": "gone", "decoded": False, "natural": [0, 0], "box": seen.images[0]["box"]}]
    assert seen.grid == []
