"""`python -m harness report results/claims.json [--html results/claims.html]`: the claims report as one page.

The page is a single static HTML file that opens offline: inline CSS, figures as base64 PNGs, no script and
no external URL. It holds a grid of verdicts (claims x models), then one section per claim: the source, the
protocol parameters, and per model the published figures against ours, the controls, the figures drawn from
each result's `data` (harness.report.figures documents the layouts), generated texts, and the model's provenance.
The catalogue's claims that no claim folder judges, each with why, and the run's provenance close the page.
Every string from the report is escaped.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.report.document import aggregate, atomic_write
from harness.report.htmlparts import (
    CSS,
    catalogue_section,
    cell,
    chips,
    claim_source,
    fmt,
    kv_table,
    mark,
    other_data,
    passed_cell,
    slug,
    table,
    texts_table,
    timestamp,
    with_iso_times,
)
from harness.report.htmlparts import esc as e
from harness.report.htmlverdicts import controls_passed, grid_notes, legend, protocol_sections, verdict_detail
from harness.report.tools import ReportError, load_report

if TYPE_CHECKING:
    from harness.report.figures import Figure

MAIN_KINDS = ("as_published", "rederive", "measure")
GENERALISATION = "not the claim's published model: evidence about the protocol here, not about the claim"
ABSENT = "<td class=\"absent\">not run</td>"


def render(document: Mapping[str, Any], title: str = "claim-harness report") -> str:
    """The whole page for one claims report."""
    results: list[dict[str, Any]] = list(document.get("results", []))
    verdicts: list[dict[str, Any]] = list(document.get("verdicts", []))
    known = {(v["claim"], v["model"]) for v in verdicts}  # a stale document: no result goes unshown
    verdicts += [v for v in aggregate(results) if (v["claim"], v["model"]) not in known]
    run: Mapping[str, Any] = document.get("run", {})
    claims = sorted({r["claim"] for r in results} | {v["claim"] for v in verdicts})
    body = [f"<h1>{e(title)}</h1>", run_line(run), summary_grid(verdicts, claims)]
    body += [claim_section(c, results, verdicts, document.get("models", {}), int(run.get("seed") or 0))
             for c in claims]
    body += [catalogue_section(), run_section(run)]
    head = f"<head><meta charset=\"utf-8\"><title>{e(title)}</title><style>{CSS}</style></head>"
    return f"<!DOCTYPE html>\n<html lang=\"en\">{head}\n<body>\n" + "\n".join(body) + "\n</body></html>\n"


STATUS_TEXT = {"running": "still running, or stopped without finishing (killed): the results below are those "
                          "written so far",
               "interrupted": "interrupted before it finished",
               "error": "ended with an internal error"}


def run_line(run: Mapping[str, Any]) -> str:
    git = run.get("git") or {}
    commit = f"{git.get('commit') or 'unknown'}{' (dirty)' if git.get('dirty') else ''}"
    status = str(run.get("status", "unknown"))
    missing = len(run.get("not_run") or [])
    if status == "complete" and not missing:
        said = "status <b>complete</b>"
    else:
        why = STATUS_TEXT.get(status, f"status {status}")
        never = f"; {missing} planned claim test(s) never ran (each claim's verdict names them)" if missing else ""
        said = f"<span class=\"problem\">run {e(why)}{e(never)}</span>"
    return (f"<p class=\"run\">started {e(timestamp(run.get('started')))}, {said}; "
            f"harness {e(run.get('harness_version'))}, git {e(commit)}, seed {e(run.get('seed'))}, "
            f"{e((run.get('device') or {}).get('platform', ''))}. "
            f"<a href=\"#run\">run provenance</a></p>")


def _models(verdicts: Iterable[Mapping[str, Any]]) -> list[str]:
    names = sorted({v["model"] for v in verdicts})
    return sorted(names, key=lambda m: m != "published-data")


def summary_grid(verdicts: list[dict[str, Any]], claims: list[str]) -> str:
    """Claims x models, one coloured cell per verdict; `data-claim`/`data-model` name each cell."""
    models = _models(verdicts)
    by_key = {(v["claim"], v["model"]): v for v in verdicts}
    head = "<tr><th>claim \\ model</th>" + "".join(f"<th>{e(m)}</th>" for m in models) + "</tr>"
    rows = []
    for claim in claims:
        cells = [grid_cell(by_key[(claim, m)]) if (claim, m) in by_key else ABSENT for m in models]
        rows.append(f"<tr><th><a href=\"#{slug(claim)}\">{e(claim)}</a></th>{''.join(cells)}</tr>")
    return ("<section id=\"summary\"><h2>Verdicts</h2>\n<table class=\"grid\">" + head + "".join(rows)
            + f"</table>\n<p class=\"legend\">{legend()} &nbsp; {mark('ND')} the published criterion also holds "
            "under its null (non-diagnostic) &nbsp; <span class=\"weak-key\">striped</span>: weights that are not "
            "the published model's (tiny or random): a verdict on them is no evidence about the claim &nbsp; "
            f"{mark('generalisation', GENERALISATION)} a model that is not the claim's published model: "
            "evidence about the protocol on that model, not about the published claim</p>"
            "</section>")


def grid_cell(v: Mapping[str, Any]) -> str:
    weak = not v.get("diagnostic_weights", False)
    notes = grid_notes(v)
    if v.get("scope") == "generalisation":
        notes.append(mark("generalisation", GENERALISATION))
    if weak:
        weights = "/".join(v.get("weights", []))
        notes.append(f"<span class=\"note\">not evidence (weights: {e(weights)})</span>")
    return (f"<td class=\"v-{e(v['verdict'])}{' weak' if weak else ''}\" data-claim=\"{e(v['claim'])}\" "
            f"data-model=\"{e(v['model'])}\" data-verdict=\"{e(v['verdict'])}\">"
            f"<a href=\"#{slug(v['claim'], v['model'])}\">{e(v['verdict'])}</a>"
            f"<br><span class=\"note\">{controls_passed(v)}</span> {' '.join(notes)}</td>")


def claim_section(claim: str, results: list[dict[str, Any]], verdicts: list[dict[str, Any]],
                  models: Mapping[str, Any], seed: int) -> str:
    mine = [r for r in results if r["claim"] == claim]
    versions = sorted({str(r["claim_version"]) for r in mine if "claim_version" in r})
    params: Mapping[str, Any] = next((r["protocol_params"] for r in mine if r.get("protocol_params")), {})
    parts = [f"<section class=\"claim\" id=\"{slug(claim)}\"><h2>{e(claim)} "
             f"<span class=\"note\">version {e(', '.join(versions) or '?')}</span></h2>",
             claim_source(claim, versions), "<h3>Protocol parameters</h3>", chips(params)]
    for v in [v for v in verdicts if v["claim"] == claim]:
        of_model = [r for r in mine if r["model"] == v["model"]]
        parts.append(model_block(v, of_model, models.get(v["model"]), seed))
    return "\n".join(parts) + "</section>"


def model_block(verdict: Mapping[str, Any], results: list[dict[str, Any]], info: Any, seed: int) -> str:
    model = verdict["model"]
    weak = "" if verdict.get("diagnostic_weights") else (
        f"<p class=\"note\">weights {e('/'.join(verdict.get('weights', [])))}: these results check that the "
        "protocol runs end to end; they are not evidence about the published model.</p>")
    if verdict.get("scope") == "generalisation":
        weak += (f"<p class=\"note\">{mark('generalisation', GENERALISATION)} {e(model)} is not one of this "
                 "claim's published models: these results are evidence about the protocol on this model, not about "
                 "the published claim. Published layers are mapped by relative depth (each result's layer_map).</p>")
    parts = [f"<article id=\"{slug(verdict['claim'], model)}\"><h3>{e(model)} "
             f"<span class=\"verdict v-{e(verdict['verdict'])}\">{e(verdict['verdict'])}</span></h3>", weak,
             verdict_detail(verdict)]
    measured = [r for r in results if "reason" not in r]
    mains = [published_vs_observed(r) for r in measured if r["kind"] in MAIN_KINDS]
    if mains:
        parts.append("<div class=\"row\">" + "".join(f"<div>{m}</div>" for m in mains) + "</div>")
    parts += protocol_sections(results)
    parts += [placeholder(r) for r in results if "reason" in r]
    parts.append(data_html(measured, seed))
    if isinstance(info, Mapping):
        parts += ["<h4>Model provenance</h4>", kv_table(info)]
    return "\n".join(p for p in parts if p) + "</article>"


def _rule(rule: Mapping[str, Any] | None) -> str:
    ops = {"lt": "<", "le": "\u2264", "gt": ">", "ge": "\u2265"}
    return ", ".join(f"{ops.get(op, op)} {fmt(bound)}" for op, bound in (rule or {}).items())


def published_vs_observed(res: Mapping[str, Any]) -> str:
    """Criterion metrics first, then figures published and observed, then the rest of each."""
    published, observed = res.get("published") or {}, res.get("observed") or {}
    criterion, detail = res.get("criterion") or {}, res.get("criterion_detail") or {}
    order = list(criterion) + [k for k in published if k in observed] + list(observed) + list(published)
    rows = [[e(k), cell(published.get(k), k in published), cell(observed.get(k), k in observed),
             e(_rule(criterion.get(k))), passed_cell((detail.get(k) or {}).get("passed"), k in criterion)]
            for k in dict.fromkeys(order)]
    nd = f" {mark('ND')}" if res.get("non_diagnostic") else ""
    held = passed_cell(res.get("passed"), True, bare=True)
    head = (f"<h4>{e(res['protocol'])}: published vs observed "
            f"<span class=\"note\">criterion {held}{nd}</span></h4>")
    return (head + table(["figure", "published", "observed", "criterion", "holds"], rows)
            + tests_table(res.get("tests") or {}) + notes_html(res))


def tests_table(tests: Mapping[str, Any]) -> str:
    if not tests:
        return ""
    rows = [[e(name), e(", ".join(f"{k} = {fmt(v)}" for k, v in t.items()) if isinstance(t, dict)
                        else fmt(t))] for name, t in tests.items()]
    return "<details><summary>test statistics</summary>" + table(["test", "result"], rows) + "</details>"


def notes_html(res: Mapping[str, Any]) -> str:
    extra = [f"n: {fmt(res.get('n'))}"] if res.get("n") else []
    if res.get("exclusions"):
        extra.append(f"excluded: {fmt(res['exclusions'])}")
    items = [*extra, *map(str, res.get("notes") or [])]
    return "<ul class=\"notes\">" + "".join(f"<li>{e(n)}</li>" for n in items) + "</ul>" if items else ""


def placeholder(res: Mapping[str, Any]) -> str:
    return (f"<div class=\"placeholder\"><b>{e(res['protocol'])}: {e(res.get('outcome', ''))}</b>"
            f"<pre>{e(str(res.get('reason', '')))}</pre></div>")


def data_html(results: list[dict[str, Any]], seed: int) -> str:
    """Figures and tables per result; results whose data equals an earlier one's point to it."""
    parts: list[str] = []
    seen: dict[str, str] = {}
    for res in results:
        data = res.get("data") or {}
        if not data:
            continue
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        if digest in seen:
            parts.append(f"<p class=\"note\">{e(res['protocol'])}: same data as {e(seen[digest])}; "
                         "see its figures.</p>")
            continue
        seen[digest] = res["protocol"]
        parts.append(result_data(res, seed))
    return ("<h4>Figures and data</h4>" + "\n".join(parts)) if parts else ""


def result_data(res: Mapping[str, Any], seed: int) -> str:
    """The figures harness.report.figures draws from a result's data, its text tables, then whatever is left."""
    from harness.report.figures import figures_for, text_rows  # matplotlib loads only when a page has data

    drawn, data = figures_for(res, seed), res.get("data") or {}
    parts = [figure_html(res["protocol"], f) for f in drawn.figures]
    parts += [f"<p class=\"problem\">{e(res['protocol'])}: figure not drawn: {e(p)}</p>"
              for p in drawn.problems]
    texts = {k: rows for k, v in data.items() if k not in drawn.used and (rows := text_rows(v))}
    parts += [texts_table(res["protocol"], k, rows, res["kind"] in MAIN_KINDS, res.get("weights"))
              for k, rows in texts.items()]
    rest = {k: v for k, v in data.items() if k not in {*drawn.used, *texts}}
    parts.append(other_data(res["protocol"], rest))
    return "\n".join(p for p in parts if p)


def figure_html(protocol: str, fig: Figure) -> str:
    width, height = int.from_bytes(fig.png[16:20], "big"), int.from_bytes(fig.png[20:24], "big")
    data = base64.b64encode(fig.png).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{data}\" width=\"{width}\" height=\"{height}\" "
            f"alt=\"{e(protocol)}: {e(fig.title)}\"><figcaption><b>{e(protocol)}: {e(fig.title)}.</b> "
            f"{e(fig.caption)}</figcaption></figure>")


def run_section(run: Mapping[str, Any]) -> str:
    keep = {k: v for k, v in run.items() if k != "merged_from"}
    parts = ["<section id=\"run\"><h2>Run provenance</h2>", kv_table(with_iso_times(keep))]
    for i, source in enumerate(run.get("merged_from") or []):
        parts += [f"<h3>merged input {i + 1}: {e(source.get('file', '?'))}</h3>", kv_table(with_iso_times(source))]
    return "\n".join(parts) + "</section>"


def write_page(document: Mapping[str, Any], path: Path) -> Path:
    """Render and write atomically; returns the path."""
    atomic_write(path, render(document))
    path.chmod(0o644)  # a page is for reading: not the private mode of the temporary file it was written to
    return path


def page_path(option: str | None, json_path: Path, root: Path) -> Path | None:
    """The plugin's --claims-html: None means beside the JSON report; 'none' or '' turns the page off; a
    relative path is taken from the rootdir, as --claims-json is."""
    if option is None:
        return json_path.with_suffix(".html")
    return None if option.strip().lower() in ("", "none") else root / Path(option)


def screenshot(page: Path, png: Path, size: str, scale: float) -> int:
    """Open the page in headless Chromium, save the top `size` of it as PNG, report console errors."""
    from harness.report.browser import BrowserError, inspect_page

    try:
        width, height = (int(x) for x in size.lower().split("x"))
        check = inspect_page(page, width=width, height=height, scale=scale)
    except ValueError:
        sys.stderr.write(f"error: --size {size!r}: expected WIDTHxHEIGHT in pixels, e.g. 1400x2000\n")
        return 2
    except BrowserError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(check.screenshot)
    sys.stdout.write(f"wrote {png} ({len(check.screenshot) // 1024} KiB)\n")
    for error in check.errors:
        sys.stderr.write(f"{page}: browser reported: {error}\n")
    return 1 if check.errors else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness report", description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a claims JSON report (results/claims.json)")
    parser.add_argument("--html", type=Path, default=None, help="output page (default: REPORT with .html)")
    parser.add_argument("--screenshot", type=Path, default=None, metavar="PNG",
                        help="also save the top of the page as headless Chromium shows it (needs chromium)")
    parser.add_argument("--size", default="1400x2000", help="screenshot viewport, WIDTHxHEIGHT (CSS pixels)")
    parser.add_argument("--scale", type=float, default=1.0, help="screenshot scale factor, e.g. 0.7")
    return parser


def checked(path: Path) -> dict[str, Any] | None:
    """The report at `path`, validated against the schema; None after writing each problem (JSON path) to
    stderr. Without jsonschema installed only the basic shape is checked, and stderr says so."""
    from harness.report.tools import SCHEMA_VERSION, validate

    try:
        document = load_report(path)
        problems = validate(document)
    except ReportError as err:
        if "jsonschema" not in str(err):
            sys.stderr.write(f"error: {err}\n")
            return None
        sys.stderr.write(f"note: {path}: only the basic shape was checked ({err})\n")
        return load_report(path)
    for problem in problems:
        sys.stderr.write(f"error: {path}: {problem}\n")
    if problems:
        sys.stderr.write(f"error: {path} does not match the claims report schema {SCHEMA_VERSION} ({len(problems)} "
                         "problem(s) above, each at its JSON path); no page written: fix the fields or "
                         "regenerate the report with the harness\n")
        return None
    return document


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    document = checked(args.report)
    if document is None:
        return 2
    out = write_page(document, args.html or args.report.with_suffix(".html"))
    sys.stdout.write(f"wrote {out}\n")
    return screenshot(out, args.screenshot, args.size, args.scale) if args.screenshot else 0
