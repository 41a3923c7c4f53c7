"""The claims page's verdict parts (harness.report.html): grid notes, the verdict's reasons, and the tables of
controls (effect against the published effect, decision, n needed), robustness checks and nulls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.claimkit.verdicts import VERDICTS
from harness.report.htmlparts import esc, fmt, mark, passed_cell, table

DECISION_WORDS = {"pass": ("pass", "pass"), "fail": ("fail: artefact", "fail"),
                  "underpowered": ("underpowered", "unk")}


def legend() -> str:
    return " ".join(f"<span class=\"verdict v-{v}\">{v}</span>" for v in VERDICTS)


def grid_notes(v: Mapping[str, Any]) -> list[str]:
    """The short notes under a verdict in the grid: ND, n needed, what did not run or was skipped."""
    notes = [mark("ND")] if v.get("non_diagnostic") else []
    needed = [n for n in (v.get("n_needed") or {}).values() if n]
    if v.get("verdict") == "underpowered":
        notes.append(f"<span class=\"note\">n &ge; {max(needed)} needed</span>" if needed
                     else "<span class=\"note\">n needed unknown</span>")
    if v.get("not_run"):
        notes.append(f"<span class=\"note\">not run: {esc(', '.join(v['not_run']))}</span>")
    if v.get("skipped_on_purpose"):
        notes.append(f"<span class=\"note\">skipped on purpose: {esc(', '.join(v['skipped_on_purpose']))}</span>")
    return notes


def controls_passed(v: Mapping[str, Any]) -> str:
    controls = v.get("controls") or {}
    return f"controls {sum(1 for d in controls.values() if d == 'pass')}/{len(controls)}"


def verdict_detail(v: Mapping[str, Any]) -> str:
    """Why this verdict: its reasons, what did not run, what was skipped on purpose, the null-weights check."""
    items = [f"reason: {r}" for r in v.get("reasons") or []]
    if v.get("not_run"):
        items.append("declared but not run (the verdict cannot rest on them): " + ", ".join(v["not_run"]))
    if v.get("skipped_on_purpose"):
        items.append("skipped on purpose (--skip-control): " + ", ".join(v["skipped_on_purpose"]))
    items += [f"{protocol}: underpowered; n >= {n} per group would decide it at the published effect"
              if n else f"{protocol}: underpowered; the n that would decide it is unknown"
              for protocol, n in (v.get("n_needed") or {}).items()]
    if v.get("null_weights"):
        items.append(f"null-weights check: {v['null_weights']}")
    return "<ul class=\"notes\">" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>" if items else ""


def _decision_cell(res: Mapping[str, Any]) -> str:
    if res.get("outcome") in ("skipped", "error") and res.get("passed") is None and "decision" not in res:
        return f"<span class=\"unk\">{esc(res.get('outcome'))}</span>"
    word, cls = DECISION_WORDS.get(str(res.get("decision")), ("no decision", "unk"))
    return f"<span class=\"{cls}\">{esc(word)}</span>"


def _effect_cells(res: Mapping[str, Any]) -> list[str]:
    effect = res.get("effect") or {}
    if not effect:
        return ["", "", ""]
    floor = (effect.get("min_fraction") or 0) * (effect.get("published") or 0)
    ci = f"[{fmt(effect.get('ci_low'))}, {fmt(effect.get('ci_high'))}]"
    return [esc(f"{effect.get('name')} = {fmt(effect.get('estimate'))}"),
            esc(f"{ci} ({fmt(effect.get('confidence'))})"),
            esc(f"{fmt(effect.get('published'))} (gone below {fmt(floor)})")]


def controls_table(controls: Sequence[Mapping[str, Any]]) -> str:
    """One row per control: its effect and CI against the published effect, the decision and n needed."""
    rows = [[esc(res["protocol"]), *_effect_cells(res), _decision_cell(res),
             esc(fmt(res.get("n_needed"))), esc(fmt(res.get("n"))), esc(fmt(res.get("exclusions"))),
             esc("; ".join(map(str, [res.get("decision_reason") or res.get("reason") or "",
                                     *(res.get("notes") or [])]))).strip("; ")]
            for res in controls]
    return table(["control", "effect", "CI", "published effect", "decision", "n needed", "n", "excluded",
                  "notes"], rows)


def checks_table(results: Sequence[Mapping[str, Any]], held_word: str) -> str:
    """Robustness checks or nulls: the criterion, what was observed, whether it held."""
    rows = []
    for res in results:
        observed, criterion = res.get("observed") or {}, res.get("criterion") or {}
        figures = "; ".join(f"{k} = {fmt(observed.get(k))}" for k in criterion)
        rule = "; ".join(f"{k} {_rule(r)}" for k, r in criterion.items())
        notes = "; ".join(map(str, res.get("notes") or [res.get("reason", "")]))
        rows.append([esc(res["protocol"]), esc(rule), esc(figures), esc(fmt(res.get("n"))),
                     passed_cell(res.get("passed"), True, outcome=res.get("outcome")), esc(notes)])
    return table(["protocol", "criterion", "observed", "n", held_word, "notes"], rows)


def _rule(rule: Mapping[str, Any] | None) -> str:
    ops = {"lt": "<", "le": "\u2264", "gt": ">", "ge": "\u2265"}
    return ", ".join(f"{ops.get(op, op)} {fmt(bound)}" for op, bound in (rule or {}).items())


def protocol_sections(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Controls, robustness checks (reported, never counted) and nulls, each as its own table."""
    parts: list[str] = []
    controls = [r for r in results if r["kind"] == "control"]
    if controls:
        parts += ["<h4>Controls</h4>", controls_table(controls)]
    robustness = [r for r in results if r["kind"] == "robustness"]
    if robustness:
        parts += ["<h4>Robustness checks <span class=\"note\">reported beside the controls, never counted"
                  "</span></h4>", checks_table(robustness, "criterion holds")]
    nulls = [r for r in results if r["kind"] == "null"]
    if nulls:
        parts += ["<h4>Nulls <span class=\"note\">the as-published criterion under its own null; where it holds "
                  "the criterion is non-diagnostic</span></h4>", checks_table(nulls, "criterion holds")]
    return parts
