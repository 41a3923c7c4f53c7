"""The controller's report: protocol results arrive as test reports; the JSON report and page are written
only once a claim has produced a result, so a session that runs no claim leaves earlier reports untouched.

The collector also knows the run's plan (every selected claim item: its claim, model and protocol), so an
interrupted run says which protocols never ran, and a test lost with a crashed pytest-xdist worker is recorded
as an error instead of vanishing. A report that cannot be written (disk full) leaves the previous one intact:
the results stay in memory, the next write retries, and the summary says so.
"""

from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING, Any

import pytest

from harness.plugin.fixtures import RESULT_KEY
from harness.plugin.state import ITEM_KEY, PLAN_KEY, state
from harness.plugin.summary import closing_lines

if TYPE_CHECKING:
    from pathlib import Path

    from harness.report.document import Report

Ident = dict[str, Any]  # claim, model, protocol, kind and declaration of one item


class ReportCollector:
    """Registered on the controller only (or a run without xdist)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.report: Report | None = None
        self.page: Path | None = None  # the HTML claims page, once written
        self.plan: dict[str, Ident] = {}  # nodeid -> ident of every selected claim item
        self.write_error: str | None = None  # why the last write failed; None once a write succeeds
        self.failed_writes: list[str] = []  # every failed write, also those a later write made good
        self.page_error: str | None = None
        self.crashes: list[dict[str, str]] = []  # tests a pytest-xdist worker died in (kept in the report)
        self._seen: set[tuple[str, str]] = set()
        self._started = time.time()

    def _report(self) -> Report:
        if self.report is None:
            import sys

            from harness.plugin.options import report_paths
            from harness.report.document import Report

            checks = {"null_weights": not self.config.getoption("--no-null-weights"),
                      "skip_control": list(self.config.getoption("--skip-control"))}
            self.report = Report(report_paths(self.config)["--claims-json"], self.config.getoption("--claim-seed"),
                                 sys.argv[1:], self.config.rootpath, started=self._started, checks=checks)
        return self.report

    def _write(self, action: Any) -> None:
        """Run a report write; a failure (disk full, permissions) is kept for the summary, never raised."""
        try:
            action()
            self.write_error = None
        except OSError as err:
            self.write_error = f"{err.__class__.__name__}: {err}"
            self.failed_writes.append(self.write_error)

    def add(self, result: dict[str, Any]) -> None:
        report = self._report()
        if "reason" not in result:  # a measurement replaces the placeholder of an earlier, lost attempt
            report.results = [r for r in report.results if not ("reason" in r and r["nodeid"] == result["nodeid"])]
        self._write(lambda: report.add(result))

    # ------------------------------------------------------------------------------------------- plan --

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.plan.update(plan_of(session.items))
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None or not self.plan:
            return
        opts = state(self.config).options()
        terminal.write_line(f"claim-harness: seed={opts.seed} weights={opts.weights} device={opts.device} "
                            f"models={','.join(opts.models)}; report: {self.config.getoption('--claims-json')}"
                            + ("" if terminal.verbosity > 0 else "; progress by claim and model: -v"))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        """In verbose mode, one line as each (claim, model) starts, with the elapsed time. Never in the dot
        rows of the default mode: a line there would split a row."""
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        ident = self.plan.get(nodeid)
        if terminal is None or terminal.verbosity <= 0 or ident is None:
            return
        key = (ident["claim"], ident["model"])
        if key in self._seen:
            return
        self._seen.add(key)
        terminal.ensure_newline()
        terminal.write(f"claim-harness [{time.time() - self._started:7.1f}s] {key[0]} on {key[1]}")

    # ----------------------------------------------------------------------------------------- results --

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props: list[tuple[str, Any]] = list(report.user_properties)
        results: list[dict[str, Any]] = [v for k, v in props if k == RESULT_KEY]
        ident: Ident | None = next((v for k, v in props if k == ITEM_KEY), None)
        for k, v in props:
            if k == PLAN_KEY:  # a pytest-xdist worker's plan, sent with its first report
                self.plan.update(v)
        report.user_properties = [(k, v) for k, v in props if k not in (RESULT_KEY, ITEM_KEY, PLAN_KEY)]
        ident = ident or self.plan.get(report.nodeid)
        if report.when == "call":
            for res in results:  # the session's declaration (its skips, its null-weights choice) wins
                declared = (ident or {}).get("declared", res.get("declared"))
                self.add({**res, "declared": declared, "outcome": report.outcome, "duration_s": report.duration,
                          "nodeid": report.nodeid})
            if not results and ident is not None and report.outcome != "passed":
                self.add(placeholder(ident, report, "error" if report.failed else "skipped"))
        elif report.when == "setup" and ident is not None and not report.passed:
            self.add(placeholder(ident, report, "skipped" if report.skipped else "error"))
        elif report.when not in ("setup", "teardown") and ident is not None and report.failed:
            # pytest-xdist reports a test whose worker died with when="???": lost unless a new worker reruns it
            self.crashes.append({"nodeid": report.nodeid, "reason": str(report.longreprtext)[-500:]})
            self.add(placeholder(ident, report, "error"))

    def not_run(self) -> list[dict[str, str]]:
        """Planned items that recorded nothing (an interrupted run, a stop after -x, a lost worker's queue)."""
        done = {r.get("nodeid") for r in (self.report.results if self.report else [])}
        return [{"claim": ident["claim"], "model": ident["model"], "protocol": ident["protocol"], "nodeid": nodeid}
                for nodeid, ident in self.plan.items() if nodeid not in done]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.report is None:
            return
        from harness.plugin.options import report_paths
        from harness.report.html import write_page

        status = {2: "interrupted", 3: "error"}.get(int(exitstatus), "complete")
        report = self.report
        self._write(lambda: report.finish(status, not_run=self.not_run(), worker_crashes=self.crashes))
        page = report_paths(self.config).get("--claims-html")
        if page is not None and self.write_error is None:
            try:
                self.page = write_page(report.document(), page)
            except OSError as err:
                self.page_error = f"claims page NOT written to {page} ({err.__class__.__name__}: {err}); the " \
                                  "previous page there is unchanged: python -m harness report renders it again"
        if self.write_error is not None or (self.unverified() and not self.config.getoption("--allow-unverified")):
            session.exitstatus = max(int(session.exitstatus), int(pytest.ExitCode.TESTS_FAILED))

    def unverified(self) -> bool:
        """Claims ran, but every one was skipped: nothing was verified."""
        results = self.report.results if self.report else []
        return bool(results) and all(r.get("outcome") == "skipped" for r in results)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report is None:
            return
        from harness.report.document import summary_rows

        rows = summary_rows(self.report.document()["verdicts"])
        if rows:
            terminalreporter.write_sep("=", "claim verdicts")
            for line in rows:
                terminalreporter.write_line(line)
        where = (f"claims report: {self.report.path}" if self.write_error is None else
                 f"claims report NOT written to {self.report.path} ({self.write_error}); the previous file there "
                 f"is unchanged and this run's {len(self.report.results)} result(s) are lost: free space, rerun")
        terminalreporter.write_line(f"{where}  (rerun: pytest {shlex.join(self.report.argv)})".rstrip())
        if self.page is not None:
            terminalreporter.write_line(f"claims page: {self.page}")
        for line, markup in closing_lines(self, state(self.config).options()):
            terminalreporter.write_line(line, **markup)


def plan_of(items: list[pytest.Item]) -> dict[str, Ident]:
    """nodeid -> (claim, model, protocol) of every claim item, from the identity collection gave it."""
    plan: dict[str, Ident] = {}
    for item in items:
        props: list[tuple[str, Any]] = list(item.user_properties)
        plan.update((item.nodeid, dict(v)) for k, v in props if k == ITEM_KEY)
    return plan


class PlanSender:
    """On a pytest-xdist worker: the worker's plan rides on its first test report to the controller, which
    can then name a test that a crashed worker took with it."""

    def __init__(self) -> None:
        self.plan: dict[str, Ident] | None = None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.plan = plan_of(session.items)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        report = yield
        if self.plan:
            report.user_properties = [*report.user_properties, (PLAN_KEY, self.plan)]
            self.plan = None
        return report


def placeholder(ident: dict[str, Any], report: pytest.TestReport, outcome: str) -> dict[str, Any]:
    """A protocol that was skipped or errored before it recorded a result; its kind and its claim's
    declaration come from collection (the controller has no claim files under pytest-xdist)."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longreprtext)[-2000:]
    return {**ident, "passed": None, "outcome": outcome, "reason": reason, "nodeid": report.nodeid,
            "duration_s": report.duration, "weights": None}
