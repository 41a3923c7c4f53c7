"""`python -m harness merge|diff|validate`: tools over claims JSON reports.

- merge IN... -o OUT [--prefer newer]: one report from several (xdist workers, hosts): the union of results.
  A (claim, model, protocol) measured in several inputs must agree (pass/fail, outcome, observed figures);
  when they disagree merge fails and lists each conflict, unless --prefer newer keeps the result of the input
  that finished last (the overridden ones are listed under run.merge_conflicts). A skipped placeholder gives
  way to a measured result. Verdicts are recomputed with harness.report.aggregate; each input's run
  provenance goes under run.merged_from.
- diff A B [--rtol R --atol A]: verdicts that changed, results present on one side only, and observed
  figures or pass/fail that changed beyond |a - b| <= atol + rtol * |a|. Exit 0 when none, 1 when some.
- validate FILE...: against harness/report/schema/claims-report.schema.json (needs jsonschema). Exit 2 on failure.

Every error names the file, the JSON path of the field and the fix; exit status 2 for unreadable input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from harness.report.document import SCHEMA_VERSION, aggregate, atomic_write

SCHEMA_FILE = "claims-report.schema.json"
TOP_LEVEL = ("schema_version", "run", "models", "results", "verdicts")
RESULT_KEYS = ("claim", "model", "protocol", "kind")
STATUS_ORDER = ("complete", "running", "interrupted", "error")  # merged status: the worst of the inputs


class ReportError(ValueError):
    """A report that cannot be read or used; the message names the file, the field and the fix."""


def read_json(path: Path) -> Any:
    """The parsed JSON of `path`, or ReportError naming the file: missing, unreadable, truncated, not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file; pass the path of a claims report, e.g. results/claims.json"
                          ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot be read ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        # at the end of the text, or inside a string that never closes before it: the file was cut short
        at_end = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
        hint = "the file looks truncated" if at_end else "the file is not valid JSON"
        raise ReportError(f"{path}: {hint}: {err.msg} at line {err.lineno} column {err.colno}; re-run the "
                          "suite or restore the complete report") from None


def load_report(path: Path) -> dict[str, Any]:
    """Read a report with the checks merge, diff and report need; full validation is `validate`."""
    doc = read_json(path)
    check_shape(doc, path)
    return dict(doc)


def check_shape(doc: Any, path: Path) -> None:
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: $ is a {type(doc).__name__}; a claims report is a JSON object")
    for key in TOP_LEVEL:
        if key not in doc:
            raise ReportError(f"{path}: $.{key} is missing; a claims report has {', '.join(TOP_LEVEL)}")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ReportError(f"{path}: $.schema_version is {doc['schema_version']!r}; this harness reads "
                          f"{SCHEMA_VERSION!r}: regenerate the report with this version")
    if not isinstance(doc["results"], list):
        kind = type(doc["results"]).__name__
        raise ReportError(f"{path}: $.results is a {kind}; expected a list of results")
    for i, res in enumerate(doc["results"]):
        if not isinstance(res, dict):
            raise ReportError(f"{path}: $.results[{i}] is a {type(res).__name__}; expected an object")
        for key in RESULT_KEYS:
            if not isinstance(res.get(key), str):
                raise ReportError(f"{path}: $.results[{i}].{key} is {res.get(key)!r}; expected a string")


# ------------------------------------------------------------------------------------------------ merge --

def _finished(run: Mapping[str, Any]) -> float:
    return float(run.get("finished") or run.get("started") or 0.0)


Key = tuple[str, str, str]


def _measured(res: Mapping[str, Any]) -> bool:
    return res.get("outcome") != "skipped"


def merge(reports: Sequence[tuple[str, Mapping[str, Any]]], prefer: str | None = None) -> dict[str, Any]:
    """One report from several (name, document) pairs; see the module docstring."""
    if not reports:
        raise ReportError("merge: no input reports; pass at least one claims JSON report")
    seeds = {name: doc["run"].get("seed") for name, doc in reports}
    if len(set(seeds.values())) > 1:
        raise ReportError(f"merge: the inputs ran with different seeds ({seeds}); a merged report has one "
                          "seed: re-run the odd ones with --claim-seed, or keep them apart")
    ordered = sorted(reports, key=lambda item: _finished(item[1]["run"]))  # stable: ties keep argument order
    results: dict[Key, tuple[str, dict[str, Any]]] = {}
    conflicts: list[str] = []
    for name, doc in ordered:
        for res in doc["results"]:
            key = (res["claim"], res["model"], res["protocol"])
            if key in results:
                earlier, kept = results[key]
                if _measured(kept) and not _measured(res):
                    continue  # a skip does not replace a measurement
                conflicts += [f"{line} ({earlier} -> {name})" for line in
                              result_diff(" / ".join(key), kept, res, 1e-6, 1e-12) if _measured(kept)]
            results[key] = (name, res)
    if conflicts and prefer != "newer":
        raise ReportError("merge: the inputs disagree on " + f"{len(conflicts)} figure(s):\n  "
                          + "\n  ".join(conflicts) + "\nkeep them apart, or pass --prefer newer to keep the "
                          "result of the input that finished last")
    merged = [res for _, res in results.values()]
    models: dict[str, Any] = {}
    for _, doc in ordered:
        models.update(doc.get("models") or {})
    run = merged_run(ordered)
    if conflicts:
        run["merge_conflicts"] = conflicts
    return {"schema_version": SCHEMA_VERSION, "run": run, "models": models, "results": merged,
            "verdicts": aggregate(merged)}


def merged_run(ordered: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The latest input's provenance, the span of all inputs, the worst status, and every input's run."""
    runs = [doc["run"] for _, doc in ordered]
    statuses = [str(r.get("status")) for r in runs]
    worst = max(statuses, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER))
    finished = [r.get("finished") for r in runs]
    return {**runs[-1], "started": min(float(r.get("started") or 0.0) for r in runs),
            "finished": None if None in finished else max(float(f) for f in finished if f is not None),
            "status": worst, "merged_from": [{"file": name, **doc["run"]} for name, doc in ordered]}


# ------------------------------------------------------------------------------------------------- diff --

def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    if not numbers:
        return bool(a == b)
    if not (math.isfinite(a) and math.isfinite(b)):
        return bool(a == b)
    return abs(a - b) <= atol + rtol * abs(a)


def _by_key(doc: Mapping[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["claim"], r["model"], r["protocol"]): r for r in doc["results"]}


def diff(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float = 1e-6, atol: float = 1e-12) -> list[str]:
    """One line per difference: verdicts, results on one side only, pass/fail and observed figures."""
    lines = []
    va = {(v["claim"], v["model"]): v["verdict"] for v in a["verdicts"]}
    vb = {(v["claim"], v["model"]): v["verdict"] for v in b["verdicts"]}
    for pair in sorted(va.keys() | vb.keys()):
        if va.get(pair) != vb.get(pair):
            was, now = va.get(pair, "absent"), vb.get(pair, "absent")
            lines.append(f"verdict   {pair[0]} / {pair[1]}: {was} -> {now}")
    ra, rb = _by_key(a), _by_key(b)
    for key in sorted(ra.keys() | rb.keys()):
        where = " / ".join(key)
        if key not in ra or key not in rb:
            lines.append(f"result    {where}: only in {'B' if key not in ra else 'A'}")
            continue
        lines += result_diff(where, ra[key], rb[key], rtol, atol)
    return lines


def result_diff(where: str, a: Mapping[str, Any], b: Mapping[str, Any], rtol: float,
                atol: float) -> list[str]:
    lines = []
    if a.get("passed") != b.get("passed") or a.get("outcome") != b.get("outcome"):
        lines.append(f"passed    {where}: {a.get('passed')} ({a.get('outcome')}) -> {b.get('passed')} "
                     f"({b.get('outcome')})")
    oa, ob = a.get("observed") or {}, b.get("observed") or {}
    for metric in sorted(oa.keys() | ob.keys()):
        x, y = oa.get(metric, "absent"), ob.get(metric, "absent")
        if not _close(x, y, rtol, atol):
            lines.append(f"observed  {where}: {metric} {x!r} -> {y!r}")
    return lines


# --------------------------------------------------------------------------------------------- validate --

def schema() -> dict[str, Any]:
    text = resources.files("harness").joinpath("report", "schema", SCHEMA_FILE).read_text(encoding="utf-8")
    return dict(json.loads(text))


def json_path(parts: Sequence[Any]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def validate(doc: Any) -> list[str]:
    """Schema errors as 'JSON path: problem' lines (empty when valid). Needs jsonschema."""
    try:
        import jsonschema
    except ImportError:
        raise ReportError("validate needs the jsonschema package: pip install jsonschema "
                          "(or pip install -e '.[test]')") from None
    validator = jsonschema.Draft202012Validator(schema())
    errors = []
    for err in sorted(validator.iter_errors(doc), key=lambda x: [str(p) for p in x.absolute_path]):
        path = list(err.absolute_path)
        if err.validator == "required" and isinstance(err.instance, dict):
            missing = [k for k in err.validator_value if k not in err.instance]
            errors += [f"{json_path([*path, k])}: missing (required)" for k in missing]
            continue
        errors.append(f"{json_path(path)}: {err.message}")
    return list(dict.fromkeys(errors))


# ------------------------------------------------------------------------------------------ command line --

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge reports from several workers or hosts")
    m.add_argument("inputs", nargs="+", type=Path, help="claims JSON reports, one per worker or host")
    m.add_argument("-o", "--output", type=Path, required=True, help="merged report ('-' for stdout)")
    m.add_argument("--prefer", choices=("newer",), default=None, help="when inputs disagree on a result, keep "
                   "the one from the input that finished last (default: fail and list the conflicts)")
    d = sub.add_parser("diff", help="compare two reports; exit 1 when they differ",
                       description="A difference is a changed verdict, a result on one side only, a changed "
                       "pass/fail, or an observed figure with |a - b| > atol + rtol * |a|.")
    d.add_argument("a", type=Path, help="the reference report")
    d.add_argument("b", type=Path, help="the report compared with it")
    d.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance of observed figures")
    d.add_argument("--atol", type=float, default=1e-12, help="absolute tolerance of observed figures")
    v = sub.add_parser("validate", help="validate reports against the JSON Schema; exit 2 when invalid")
    v.add_argument("files", nargs="+", type=Path, help="claims JSON reports")
    return parser


def _merge(args: argparse.Namespace) -> int:
    merged = merge([(str(p), load_report(p)) for p in args.inputs], args.prefer)
    text = json.dumps(merged, indent=2, allow_nan=False) + "\n"
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        atomic_write(args.output, text)
        sys.stderr.write(f"merged {len(args.inputs)} reports ({len(merged['results'])} results) into "
                         f"{args.output}\n")
    return 0


def _diff(args: argparse.Namespace) -> int:
    lines = diff(load_report(args.a), load_report(args.b), args.rtol, args.atol)
    sys.stdout.write("".join(f"{line}\n" for line in lines) or "no differences\n")
    return 1 if lines else 0


def _validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        problems = validate(read_json(path))
        for problem in problems:
            sys.stderr.write(f"{path}: {problem}\n")
        if problems:
            status = 2
            sys.stderr.write(f"{path}: does not match the claims report schema {SCHEMA_VERSION} (harness/"
                             f"schema/{SCHEMA_FILE}): fix the field(s) above or regenerate the report\n")
        else:
            sys.stdout.write(f"{path}: valid (schema_version {SCHEMA_VERSION})\n")
    return status


COMMANDS = {"merge": _merge, "diff": _diff, "validate": _validate}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ReportError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
