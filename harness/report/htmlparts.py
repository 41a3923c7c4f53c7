"""The pieces of the claims page (harness.report.html): style, escaping, number formatting and tables.

Every value from a report passes through `esc` (html.escape) before it reaches the page.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from harness.claimkit.catalogue import CatalogueError, load_catalogue
from harness.claimkit.registry import ClaimError, load_claims

VERDICT_COLOURS = {
    "reproduced": "#2e7d32", "fragile": "#e08a00", "underpowered": "#8d6e00", "not_reproduced": "#c62828",
    "non_diagnostic": "#ad1457", "measured": "#00838f", "rederived": "#1565c0", "inconclusive": "#5c6b7a",
    "skipped": "#9e9e9e", "error": "#6a1b9a",
}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1400px;
 padding:0 16px;color:#1d232a;background:#fff}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:20px;border-bottom:2px solid #d5dbe1;padding-bottom:4px;margin-top:36px}
h3{font-size:17px;margin:24px 0 6px}h4{font-size:15px;margin:16px 0 4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d5dbe1;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.grid td{color:#fff;font-weight:600;min-width:150px}table.grid td a{color:#fff}
table.grid td .note{color:#fff;font-weight:400}
td.weak,.weak-key{background-image:
 repeating-linear-gradient(45deg,rgba(255,255,255,.28) 0 6px,transparent 6px 12px)}
.weak-key{background-color:#777;color:#fff;padding:0 6px;border-radius:3px}
table.grid td.absent{background:#fafafa;color:#8a8a8a;font-weight:400}
.verdict{color:#fff;padding:1px 7px;border-radius:3px;font-size:13px;font-weight:600}
.pass{color:#2e7d32;font-weight:600}.fail{color:#c62828;font-weight:600}.unk{color:#5c6b7a;font-weight:600}
.note{color:#5c6b7a;font-size:12px}.mark{background:#fff3cd;color:#7a5a00;border-radius:3px;padding:0 4px;
 font-size:11px;font-weight:700}.problem{color:#c62828;font-weight:600}
.run,.legend{color:#3b4652}.legend .verdict{margin-right:4px}
figure{margin:10px 0 18px}figure img{max-width:100%;height:auto;border:1px solid #e3e7eb}
figcaption{font-size:12px;color:#3b4652;max-width:1100px}
pre{white-space:pre-wrap;background:#f7f8fa;padding:6px;border:1px solid #e3e7eb;max-height:240px;
 overflow:auto}
.gen{white-space:pre-wrap;overflow-wrap:anywhere;min-width:14em;max-width:420px;max-height:220px;overflow:auto;
 font-family:ui-monospace,monospace;font-size:12px}.scroll{overflow-x:auto;max-width:100%}
.row{display:flex;flex-wrap:wrap;gap:4px 28px;align-items:flex-start}
ul.params{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 8px;font-size:13px}
ul.params li{background:#f2f4f7;border:1px solid #d5dbe1;border-radius:3px;padding:1px 6px}
article{border-left:3px solid #d5dbe1;padding-left:14px;margin:18px 0}
""" + "".join(f".v-{v}{{background-color:{c}}}" for v, c in VERDICT_COLOURS.items())


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def slug(*parts: str) -> str:
    return "--".join(re.sub(r"[^A-Za-z0-9_.-]", "-", p) for p in parts)


def fmt(value: Any) -> str:
    """Numbers to 4 significant figures; None (NaN in the report) as a dash; long lists shortened."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        shown = ", ".join(fmt(v) for v in value[:8])
        return f"[{shown}{f', ... ({len(value)} values)' if len(value) > 8 else ''}]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) or "\u2014"
    return str(value)


def cell(value: Any, present: bool) -> str:
    if not present:
        return ""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return f"<span class=\"{'num' if numeric else ''}\">{esc(fmt(value))}</span>"


def passed_cell(passed: Any, applies: bool, *, outcome: Any = None, bare: bool = False) -> str:
    """pass / fail / inconclusive (or the outcome of a skipped or failed test)."""
    if not applies:
        return ""
    if outcome in ("skipped", "error") and passed is None:
        return f"<span class=\"unk\">{esc(outcome)}</span>"
    word, cls = {True: ("pass", "pass"), False: ("fail", "fail")}.get(passed, ("inconclusive", "unk"))
    return word if bare else f"<span class=\"{cls}\">{word}</span>"


def mark(text: str, title: str = "the published criterion also holds under its null") -> str:
    return f"<span class=\"mark\" title=\"{esc(title)}\">{esc(text)}</span>"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of already-escaped cells."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def kv_table(mapping: Mapping[str, Any]) -> str:
    if not mapping:
        return "<p class=\"note\">none recorded</p>"
    rows = [[esc(k), esc(json.dumps(v, sort_keys=True) if isinstance(v, dict) else fmt(v))]
            for k, v in mapping.items()]
    return table(["field", "value"], rows)


def chips(mapping: Mapping[str, Any]) -> str:
    """Short key = value pairs as a wrapped list (protocol parameters)."""
    if not mapping:
        return "<p class=\"note\">none recorded</p>"
    items = "".join(f"<li><b>{esc(k)}</b> = {esc(fmt(v))}</li>" for k, v in mapping.items())
    return f"<ul class=\"params\">{items}</ul>"


def timestamp(value: Any) -> str:
    """A Unix time as ISO 8601 in UTC (2026-03-01T14:05:09+00:00); 'unknown' when there is none."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "unknown"
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC).isoformat(timespec="seconds")


TIME_FIELDS = ("started", "finished")


def with_iso_times(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run's provenance with its Unix times shown as ISO 8601 (the JSON report keeps the numbers)."""
    return {k: timestamp(v) if k in TIME_FIELDS and v is not None else v for k, v in run.items()}


def claim_source(claim_id: str, versions: Sequence[str]) -> str:
    """Title, statement and source of the claim, from this checkout's registry (the report holds only ids)."""
    try:
        claim = load_claims().get(claim_id)
    except (ClaimError, ValueError, OSError) as err:
        return f"<p class=\"problem\">claim registry unreadable, source not shown: {esc(err)}</p>"
    if claim is None:
        return (f"<p class=\"note\">claim {esc(claim_id)} is not in this checkout's registry "
                "(fixtures/claims/); its source is not shown.</p>")
    stale = "" if versions == [str(claim.version)] else (
        f" <span class=\"problem\">registry has version {claim.version}, the report "
        f"{esc(', '.join(versions))}</span>")
    src = claim.source
    files = ", ".join(map(str, src.get("files", [])))
    return (f"<p><b>{esc(claim.title)}</b>{stale}</p><p>{esc(claim.statement)}</p>"
            f"<p class=\"note\">source: {esc(src.get('repo'))} @ {esc(src.get('commit'))}; "
            f"files: {esc(files)}; published models: {esc(', '.join(claim.models))} "
            f"(from fixtures/claims/{esc(claim_id)}.toml)</p>")


TEXT_ROWS = 12  # rows of generated text shown per table; the JSON report holds them all


def _value_cell(value: Any) -> str:
    if isinstance(value, str):
        return f"<div class=\"gen\">{esc(value)}</div>"
    return f"<span class=\"note\">{esc(fmt(value))}</span>" if isinstance(value, dict) else esc(fmt(value))


NOT_LANGUAGE = ("tiny-model output: these weights are random or tiny, so the texts are not language; they show "
                "that generation ran end to end. Bytes that do not form UTF-8 appear as \\xNN escapes.")


def texts_table(protocol: str, key: str, rows: Sequence[Mapping[str, Any]], open_: bool,
                weights: str | None = None) -> str:
    """Layout 6 of harness.report.figures: one row per object, one column per field, texts side by side.
    Texts from tiny or random weights are labelled as such."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    shown = rows[:TEXT_ROWS]
    more = f", the first {len(shown)} shown (all are in the JSON report)" if len(rows) > len(shown) else ""
    label = f"<p class=\"note\">{esc(NOT_LANGUAGE)}</p>" if weights in ("tiny", "random") else ""
    body = label + "<div class=\"scroll\">" + table(columns, [[_value_cell(row.get(c)) for c in columns]
                                                              for row in shown]) + "</div>"
    title = "tiny-model output" if label else "generated texts"
    return (f"<details{' open' if open_ else ''}><summary><b>{esc(protocol)}</b>: {title} "
            f"<code>{esc(key)}</code> ({len(rows)} rows{esc(more)})</summary>{body}</details>")


def other_data(protocol: str, data: Mapping[str, Any]) -> str:
    """Data keys no figure or table draws, listed so nothing recorded is hidden."""
    if not data:
        return ""
    return (f"<details><summary><b>{esc(protocol)}</b>: other data ({esc(', '.join(data))})</summary>"
            f"{kv_table(data)}</details>")


def catalogue_section() -> str:
    """The catalogue's claims that no claim folder judges (reported, not re-derivable, narrative only, not
    targeted), each with why, from this checkout's fixtures/catalogue.toml."""
    head = "<section id=\"catalogue\"><h2>The rest of the catalogue</h2>"
    try:
        entries = [e for e in load_catalogue() if e.status != "implemented"]
    except (CatalogueError, OSError) as err:
        return f"{head}<p class=\"problem\">catalogue unreadable: {esc(err)}</p></section>"
    rows = [[esc(e.id), esc(e.spec), esc(e.status.replace("_", " ")), esc(e.title),
             esc(e.reason or f"{e.folder}: {', '.join(e.protocols)}. {e.note or ''}")] for e in entries]
    note = ("<p class=\"note\">Claims of the sources that no claim above judges, and why "
            "(fixtures/catalogue.toml).</p>")
    return head + note + table(["claim", "spec", "status", "what", "why"], rows) + "</section>"
