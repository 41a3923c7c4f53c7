"""The closing lines of a claims run: each problem said once, with the fix, after the verdict table.

- claim tests skipped, grouped by model, with the reason once per model (not once per test);
- `--model-path` options whose model the run did not select (the path was not used);
- planned claim tests that never ran (an interrupted run, a stop after -x, a crashed worker);
- a run in which claims ran but none was verified: a red closing line, and a non-zero exit unless
  --allow-unverified (set by the collector).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.plugin.collector import ReportCollector
    from harness.plugin.options import Options

Line = tuple[str, dict[str, bool]]
PROVIDE = ("provide weights with --model-path ID=DIR, or put them in the Hugging Face cache at the pinned revision "
           "(the harness never downloads unless --allow-download), or run --weights random for a smoke run that "
           "is not evidence")


def skipped_by_model(results: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """model -> (claim tests skipped, the first reason given)."""
    found: dict[str, tuple[int, str]] = {}
    for res in results:
        if res.get("outcome") == "skipped":
            reason = str(res.get("reason") or "no reason recorded").removeprefix("Skipped: ")
            count, first = found.get(res["model"], (0, reason))
            found[res["model"]] = (count + 1, first)
    return found


def pytest_lists_skips(config: Any) -> bool:
    """Whether pytest's short summary already gives each skip reason (-rs, -ra, -rA)."""
    return any(c in (config.getoption("reportchars") or "") for c in "saA")


def closing_lines(collector: ReportCollector, opts: Options) -> list[Line]:
    from harness.plugin.options import unused_model_paths

    results = collector.report.results if collector.report else []
    lines: list[Line] = []
    skipped = skipped_by_model(results)
    if skipped and not pytest_lists_skips(collector.config):
        lines.append(("claim tests skipped, by model (each reason given once):", {"yellow": True}))
        lines += [(f"  {model}: {n} skipped: {reason}", {}) for model, (n, reason) in skipped.items()]
    lines += [(line, {"yellow": True}) for line in unused_model_paths(opts)]
    if collector.failed_writes and collector.write_error is None:
        lines.append((f"{len(collector.failed_writes)} write(s) of the claims report failed "
                      f"({collector.failed_writes[0]}) and a later one succeeded: the report is complete",
                      {"yellow": True}))
    if collector.page_error:
        lines.append((collector.page_error, {"yellow": True}))
    never = collector.not_run()
    if never:
        shown = ", ".join(f"{i['claim']}/{i['protocol']} on {i['model']}" for i in never[:6])
        lines.append((f"{len(never)} planned claim test(s) never ran ({shown}{', ...' * (len(never) > 6)}); the "
                      "report lists them under run.not_run: rerun to complete it", {"yellow": True}))
    if collector.unverified():
        allowed = collector.config.getoption("--allow-unverified")
        lines.append((f"no claim was verified: all {len(results)} claim tests were skipped (models: "
                      f"{', '.join(skipped)}); {PROVIDE}."
                      + (" Exit status 0: --allow-unverified." if allowed else
                         " Exit status 1; --allow-unverified exits 0 for CI that only checks collection."),
                      {"red": not allowed, "bold": True}))
    return lines
