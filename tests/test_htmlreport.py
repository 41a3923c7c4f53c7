"""harness/htmlreport.py and harness/figures.py: the claims page, from a real CPU-suite report.

The page tests read the page the pytest plugin wrote beside the JSON report of tests/cpu_suite.py. The figure
builders whose claims are not in the suite yet (per-layer RFC, layer x head heatmap, generated texts, a
recorded permutation null) are tested on data built here in the layouts harness/figures.py documents.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cpu_suite import SuiteRun, cpu_suite_run
from PIL import Image

from harness.claimkit.catalogue import load_catalogue
from harness.report import figures, plots
from harness.report.document import aggregate
from harness.report.html import main, page_path, render, result_data

PNG_URI = "data:image/png;base64,"


class Page(HTMLParser):
    """The parts of a page the tests look at: images, grid cells, ids, links, scripts, external URLs."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.cells: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.ids.update([a["id"]] if "id" in a else [])
        if tag == "img":
            self.images.append(a)
        if tag == "td" and "data-claim" in a:
            self.cells.append((a["data-claim"], a["data-model"]))
        self.links += [a[k] for k in ("href", "src") if k in a and not a[k].startswith(PNG_URI)]


def decoded(src: str) -> Image.Image:
    """The PNG of a data URI, fully decoded."""
    assert src.startswith(PNG_URI), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    return cpu_suite_run(tmp_path_factory)


@pytest.fixture(scope="module")
def page(suite: SuiteRun) -> Page:
    return Page(suite.html_path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------- the page, for real --

def test_the_plugin_writes_the_page_beside_the_json_report(suite: SuiteRun) -> None:
    assert suite.html_path.is_file() and f"claims page: {suite.html_path}" in suite.output


def test_the_grid_lists_every_claim_and_model_of_the_report(suite: SuiteRun, page: Page) -> None:
    verdicts = suite.document()["verdicts"]
    assert len(verdicts) >= 2
    assert sorted(page.cells) == sorted((v["claim"], v["model"]) for v in verdicts)


def test_every_figure_is_a_decodable_png_drawn_from_report_data(suite: SuiteRun, page: Page) -> None:
    with_data = [r for r in suite.document()["results"] if r.get("data")]
    assert with_data and len(page.images) >= len({json.dumps(r["data"], sort_keys=True) for r in with_data})
    for img in page.images:
        image = decoded(img["src"])
        assert image.size == (int(img["width"]), int(img["height"])) and min(image.size) > 100
        colours = image.getcolors(maxcolors=1 << 16)  # None: more colours than that
        assert colours is None or len(colours) > 8, f"{img['alt']}: a blank image"


def test_the_page_is_self_contained(suite: SuiteRun, page: Page) -> None:
    text = suite.html_path.read_text(encoding="utf-8")
    assert "script" not in page.tags and "link" not in page.tags
    assert all(link.startswith("#") and link[1:] in page.ids for link in page.links), page.links
    assert "figure not drawn" not in text


def test_the_page_shows_published_observed_controls_and_provenance(suite: SuiteRun) -> None:
    doc, text = suite.document(), suite.html_path.read_text(encoding="utf-8")
    model = next(m for m in doc["models"].values())
    for needle in ("published vs observed", "Controls", "control:token_matched", "Protocol parameters",
                   "Run provenance", model["resolved_revision"], model["dtype"], "not evidence",
                   str(doc["run"]["git"]["commit"]), "recomputed for this page", "PR by layer"):
        assert needle in text, needle


def test_the_page_lists_the_catalogue_claims_no_folder_judges(suite: SuiteRun) -> None:
    text = suite.html_path.read_text(encoding="utf-8")
    section = text[text.index("<section id=\"catalogue\">"):text.index("<section id=\"run\">")]
    others = [e for e in load_catalogue() if e.status != "implemented"]
    assert others and all(f"<td>{e.id}</td>" in section for e in others)
    assert "<td>rv_contraction</td>" not in section and "not rederivable" in section and "narrative only" in section


def test_the_command_line_renders_the_same_page(suite: SuiteRun, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "page.html"
    assert main([str(suite.json_path), "--html", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_text(encoding="utf-8") == suite.html_path.read_text(encoding="utf-8")


def test_a_truncated_report_is_an_error_naming_the_file(suite: SuiteRun, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.json"
    cut.write_text(suite.json_path.read_text(encoding="utf-8")[:500], encoding="utf-8")
    assert main([str(cut)]) == 2
    assert f"{cut}: the file looks truncated" in capsys.readouterr().err
    assert not cut.with_suffix(".html").exists()


def small(doc: dict[str, Any], keep: int = 1) -> dict[str, Any]:
    """The document cut to its first `keep` results, with their verdicts (a page that renders fast)."""
    doc = copy.deepcopy(doc)
    doc["results"] = doc["results"][:keep]
    doc["verdicts"] = aggregate(doc["results"])
    return doc


def test_report_text_is_escaped(suite: SuiteRun) -> None:
    doc = small(suite.document())
    hostile = "<script>alert('x')</script>"
    res = doc["results"][0]
    res.update(claim=hostile, model=hostile, protocol=hostile, notes=[hostile], data={},
               observed={**res["observed"], hostile: hostile}, protocol_params={hostile: hostile})
    doc["verdicts"] = aggregate(doc["results"])
    doc["run"]["argv"] = [hostile]
    text = render(doc)
    assert "<script" not in text and text.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") >= 8
    assert "script" not in Page(text).tags


def test_results_without_a_verdict_still_show(suite: SuiteRun) -> None:
    doc = small(suite.document(), keep=len(suite.document()["results"]))
    for res in doc["results"]:
        res["data"] = {}
    doc["verdicts"] = []  # a stale or hand-edited document
    expected = sorted((v["claim"], v["model"]) for v in aggregate(doc["results"]))
    assert len(expected) >= 2 and sorted(Page(render(doc)).cells) == expected


def test_claims_html_option_paths(tmp_path: Path) -> None:
    report = tmp_path / "out" / "claims.json"
    assert page_path(None, report, tmp_path) == tmp_path / "out" / "claims.html"
    assert page_path("none", report, tmp_path) is None and page_path("", report, tmp_path) is None
    assert page_path("x/page.html", report, tmp_path) == tmp_path / "x" / "page.html"
    assert page_path("/abs/page.html", report, tmp_path) == Path("/abs/page.html")


# --------------------------------------------------------------------- figure builders on constructed data --

@pytest.fixture
def drawn_axes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every matplotlib figure the builders save, so a test can read titles and axis labels."""
    seen: list[Any] = []
    original = plots._png

    def keep(fig: Any) -> bytes:
        seen.append(fig)
        return original(fig)

    monkeypatch.setattr(plots, "_png", keep)
    return seen


def assert_labelled(figs: list[Any]) -> None:
    for fig in figs:
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                assert ax.get_ylabel(), "colour bar without a label"
                continue
            assert ax.get_title() and ax.get_ylabel(), (ax.get_title(), ax.get_ylabel())
            assert ax.get_xlabel() or ax.get_xticklabels(), ax.get_title()


def layer_profile(n: int = 12, with_ci: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    layers = list(range(n))

    def series(shift: float) -> dict[str, list[float]]:
        mean = (np.sin(np.arange(n) / 3) + shift).tolist()
        ci = {"ci_low": [m - 0.1 for m in mean], "ci_high": [m + 0.1 for m in mean]} if with_ci else {}
        return {"mean": mean, **ci}

    diff = rng.normal(0, 0.2, n).tolist()
    diff_ci = {"ci_low": [d - 0.15 for d in diff], "ci_high": [d + 0.15 for d in diff]} if with_ci else {}
    return {"kind": "layer_profile", "metric": "RFC", "units": "nats", "layers": layers,
            "series": {"base": series(0.0), "instruct": series(0.1)},
            "diff": {"label": "dRFC = instruct - base", "mean": diff, **diff_ci}}


def result_with(data: dict[str, Any]) -> dict[str, Any]:
    return {"claim": "rfc_example", "protocol": "as_published", "kind": "as_published", "data": data,
            "protocol_params": {}}


@pytest.mark.parametrize("with_ci", [True, False])
def test_layer_profile_draws_series_with_cis_and_diff_bars(with_ci: bool, drawn_axes: list[Any]) -> None:
    drawn = figures.figures_for(result_with({"rfc_by_layer": layer_profile(with_ci=with_ci)}))
    assert drawn.problems == [] and drawn.used == {"rfc_by_layer"} and len(drawn.figures) == 1
    assert decoded("data:image/png;base64," + base64.b64encode(drawn.figures[0].png).decode()).size[0] > 300
    (fig,) = drawn_axes
    assert len(fig.axes) == 2 and "dRFC" in fig.axes[1].get_title()
    assert ("dark where the CI excludes 0" in drawn.figures[0].caption) == with_ci
    assert_labelled(drawn_axes)


def test_layer_head_heatmap(drawn_axes: list[Any]) -> None:
    values = np.random.default_rng(2).normal(0, 0.3, (12, 7)).tolist()
    data = {"entropy_diff": {"kind": "layer_head", "metric": "H(instruct) - H(base)", "units": "nats",
                             "values": values}}
    drawn = figures.figures_for(result_with(data))
    assert drawn.problems == [] and len(drawn.figures) == 1
    assert "12 layers x 7 heads" in drawn.figures[0].caption
    assert_labelled(drawn_axes)


def test_a_recorded_permutation_null_is_drawn_and_not_recomputed(drawn_axes: list[Any]) -> None:
    rng = np.random.default_rng(3)
    records = {c: [{"r_v": float(v), "tokens": 10 + i} for i, v in enumerate(rng.normal(m, 0.1, 8))]
               for c, m in (("recursive", 0.9), ("baseline", 1.1))}
    null = {"kind": "permutation_null", "statistic": "mean(baseline) - mean(recursive)", "units": "R_V ratio",
            "null": rng.normal(0, 0.05, 500).tolist(), "observed": 0.2, "p_value": 0.002}
    drawn = figures.figures_for(result_with({**records, "permutation": null}))
    assert drawn.problems == [] and [f.title for f in drawn.figures] == ["R_V per prompt", "permutation null"]
    assert "recomputed" not in drawn.figures[0].caption and "recorded p = 0.002" in drawn.figures[1].caption
    assert_labelled(drawn_axes)


def test_the_recomputed_permutation_null_is_seeded_and_sensible() -> None:
    a, b = np.arange(8.0), np.arange(8.0) + 10
    null = plots.permutation_null(a, b, seed=0)
    assert np.array_equal(null, plots.permutation_null(a, b, seed=0))
    assert not np.array_equal(null, plots.permutation_null(a, b, seed=1))
    assert abs(null.mean()) < 0.5 and plots.two_sided_p(null, 10.0) < 0.001
    assert plots.two_sided_p(plots.permutation_null(a, a + 0.01, 0), 0.01) > 0.5


def test_the_rv_layouts_are_labelled(suite: SuiteRun, drawn_axes: list[Any]) -> None:
    doc = suite.document()
    for res in [r for r in doc["results"] if r.get("data")][:2]:
        drawn = figures.figures_for(res, doc["run"]["seed"])
        assert drawn.problems == [] and drawn.figures and set(drawn.used) == set(res["data"])
    assert_labelled(drawn_axes)


def test_generated_texts_side_by_side_with_metrics(drawn_axes: list[Any]) -> None:
    rows = [{"prompt": f"Describe <yourself> {i}", "normal": "I am a model.", "ablated": "the the the the",
             "patched": "observer observed", "metrics_normal": {"distinct_1": 1.0, "longest_run": 1.0},
             "metrics_ablated": {"distinct_1": 0.25, "longest_run": 4.0}} for i in range(15)]
    res = result_with({"prompts": rows, "hook_calls": {"blocks.3.attn": 2}})
    drawn = figures.figures_for(res)
    assert [f.title for f in drawn.figures] == ["repetition metrics by condition"] and drawn.used == set()
    (fig,) = drawn_axes
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["normal\n(n=15)", "ablated\n(n=15)"]
    assert_labelled(drawn_axes)
    html = result_data(res, seed=0)
    assert "&lt;yourself&gt; 0" in html and "<yourself>" not in html and "<img " in html
    header = html.split("<table>")[1].split("</tr>")[0]
    columns = ("prompt", "normal", "ablated", "patched", "metrics_normal", "metrics_ablated")
    assert all(f"<th>{c}</th>" in header for c in columns)
    assert html.count("the the the the") == 12 and "15 rows, the first 12 shown" in html
    assert "distinct_1: 0.25, longest_run: 4" in html
    assert "other data (hook_calls)" in html


def test_texts_by_column_are_a_table() -> None:
    res = result_with({"layers": [14, 13], "texts": {"14": ["a a a", "b b"], "13": ["c", "d d d"]}})
    html = result_data(res, seed=0)
    assert "<th>14</th><th>13</th>" in html and html.index("a a a") < html.index(">c<")
    assert "other data (layers)" in html


def test_malformed_data_is_shown_as_a_problem_never_hidden(suite: SuiteRun) -> None:
    bad = layer_profile()
    bad["series"]["base"]["mean"] = bad["series"]["base"]["mean"][:-1]
    drawn = figures.figures_for(result_with({"rfc_by_layer": bad}))
    assert drawn.figures == [] and len(drawn.problems) == 1
    assert "rfc_by_layer" in drawn.problems[0] and "11 values for 12 layers" in drawn.problems[0]
    doc = small(suite.document())
    doc["results"][0]["data"] = {"rfc_by_layer": bad, "mystery": {"a": 1}}
    text = render(doc)
    assert "figure not drawn" in text and "other data (mystery)" in text


def test_the_page_shows_each_verdict_and_why(suite: SuiteRun) -> None:
    """The grid and the claim section name the verdict's reasons: n needed for an underpowered control, the
    declared controls that did not run, those skipped on purpose, robustness checks apart, and the
    null-weights check; the published-data column reads rederived."""
    doc = copy.deepcopy(suite.document())
    model = next(r["model"] for r in doc["results"] if r["kind"] == "control")
    ours = [r for r in doc["results"] if r["model"] == model]
    controls = [r for r in ours if r["kind"] == "control"]
    declared = {**controls[0]["declared"], "skipped_on_purpose": [controls[-1]["protocol"].partition(":")[2]]}
    doc["results"] = [r for r in doc["results"] if r is not controls[-1] and r["model"] in (model, "published-data")]
    for res in doc["results"]:
        res["declared"] = declared if res["model"] == model else res["declared"]
        res["data"] = {}
    first = controls[0]
    first.update(decision="underpowered", n_needed=41, passed=None,
                 effect={**first["effect"], "ci_low": -0.01, "ci_high": 0.3})
    dropped = controls[1]["protocol"].partition(":")[2]
    doc["results"].remove(controls[1])
    doc["verdicts"] = aggregate(doc["results"])
    found = {v["model"]: v for v in doc["verdicts"]}
    text = render(doc)
    assert found["published-data"]["verdict"] == "rederived" and "data-verdict=\"rederived\"" in text
    assert found[model]["not_run"] == [dropped] and f"not run: {dropped}" in text
    assert f"skipped on purpose: {declared['skipped_on_purpose'][0]}" in text
    assert f"{first['protocol']}: underpowered; n &gt;= 41 per group would decide it" in text
    assert "Robustness checks" in text and "never counted" in text and "null-weights check: " in text
    for verdict in ("reproduced", "fragile", "underpowered", "non_diagnostic", "rederived", "measured"):
        assert f"class=\"verdict v-{verdict}\"" in text  # the legend names every verdict


# ------------------------------------------------------------------------------- what the page says (issue 12) --

def test_an_interrupted_run_says_so_once_and_counts_what_never_ran(suite: SuiteRun) -> None:
    doc = small(suite.document(), keep=2)
    first = doc["results"][0]
    never = [{"claim": first["claim"], "model": first["model"], "protocol": p, "nodeid": f"x::{p}"}
             for p in ("control:token_matched", "control:bos_excluded")]
    doc["run"].update(status="interrupted", finished=None, not_run=never)
    text = render(doc)
    line = text.split("<p class=\"run\">", 1)[1].split("</p>", 1)[0]
    assert line.count("interrupted") == 1 and "status <b>" not in line  # was "status interrupted run status: ..."
    assert "run interrupted before it finished; 2 planned claim test(s) never ran" in line
    assert "declared but not run" in text  # each claim's verdict names its protocols that did not run


def test_a_complete_run_says_complete(suite: SuiteRun) -> None:
    line = render(small(suite.document())).split("<p class=\"run\">", 1)[1].split("</p>", 1)[0]
    assert "status <b>complete</b>" in line and "problem" not in line


def test_times_are_iso_8601(suite: SuiteRun) -> None:
    doc = small(suite.document())
    doc["run"].update(started=1796000000.25, finished=1796000123.0)
    doc["run"]["merged_from"] = [{**doc["run"], "file": "a.json"}]
    text = render(doc)
    provenance = text.split("<section id=\"run\">", 1)[1]
    assert provenance.count("2026-11-30T") == 4 and "e+09" not in text  # started and finished, run and input
    assert "2026-11-30T00:53:20+00:00" in text and "2026-11-30T00:55:23+00:00" in text


@pytest.mark.parametrize(("weights", "labelled"), [("tiny", True), ("random", True), ("pretrained", False)])
def test_generated_texts_of_tiny_weights_are_labelled(weights: str, labelled: bool) -> None:
    rows = [{"prompt": "p", "normal": "the cat\\xa1\\xa1", "ablated": "a a a"}]
    res = {"protocol": "as_published", "kind": "as_published", "weights": weights, "data": {"prompts": rows}}
    text = result_data(res, 0)
    assert ("tiny-model output" in text) is labelled
    assert ("appear as \\xNN escapes" in text) is labelled
    assert "the cat\\xa1\\xa1" in text


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True, check=False,
                          timeout=120)


def test_report_validates_on_read_and_names_each_json_path(suite: SuiteRun, tmp_path: Path) -> None:
    doc = suite.document()
    doc["verdicts"][0]["verdict"] = "maybe"
    gone = next(i for i, r in enumerate(doc["results"]) if "observed" in r)
    del doc["results"][gone]["observed"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    done = run_cli("report", str(bad))
    assert done.returncode == 2
    assert f"error: {bad}: $.verdicts[0].verdict: 'maybe' is not one of" in done.stderr
    assert f"error: {bad}: $.results[{gone}].observed: missing (required)" in done.stderr
    assert "no page written" in done.stderr and not bad.with_suffix(".html").exists()
