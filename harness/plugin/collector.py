"""The controller's report: protocol results arrive as test reports; the JSON report and page are written
only once a claim has produced a result, so a session that runs no claim leaves earlier reports untouched."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.plugin.fixtures import RESULT_KEY
from harness.plugin.state import ITEM_KEY

if TYPE_CHECKING:
    from harness.report.document import Report


class ReportCollector:
    """Registered on the controller only (or a run without xdist)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.report: Report | None = None
        self.page: Path | None = None  # the HTML claims page, once written
        self._seen: set[tuple[str, str]] = set()
        self._started = time.time()

    def _report(self) -> Report:
        if self.report is None:
            from harness.report.document import Report

            path = Path(self.config.getoption("--claims-json"))
            path = path if path.is_absolute() else Path(self.config.rootpath) / path
            checks = {"null_weights": not self.config.getoption("--no-null-weights"),
                      "skip_control": list(self.config.getoption("--skip-control"))}
            self.report = Report(path, self.config.getoption("--claim-seed"), sys.argv[1:], self.config.rootpath,
                                 started=self._started, checks=checks)
        return self.report

    def _progress(self, result: dict[str, Any]) -> None:
        """One line per (claim, model) as it starts, with the elapsed time, through pytest's reporter."""
        key = (result["claim"], result["model"])
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if key in self._seen or terminal is None:
            return
        self._seen.add(key)
        terminal.ensure_newline()
        terminal.write_line(f"claim-harness [{time.time() - self._started:7.1f}s] {key[0]} on {key[1]}")

    def add(self, result: dict[str, Any]) -> None:
        self._progress(result)
        self._report().add(result)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None or not any(item.get_closest_marker("claim") for item in session.items):
            return
        from harness.plugin.state import state

        opts = state(self.config).options()
        terminal.write_line(f"claim-harness: seed={opts.seed} weights={opts.weights} device={opts.device} "
                            f"models={','.join(opts.models)}; report: {self.config.getoption('--claims-json')}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        results: list[dict[str, Any]] = [v for k, v in report.user_properties if k == RESULT_KEY]  # type: ignore[misc]
        ident: dict[str, Any] | None = next(  # type: ignore[assignment]
            (v for k, v in report.user_properties if k == ITEM_KEY), None)
        report.user_properties = [(k, v) for k, v in report.user_properties if k not in (RESULT_KEY, ITEM_KEY)]
        if report.when == "call":
            for res in results:  # the session's declaration (its skips, its null-weights choice) wins
                declared = (ident or {}).get("declared", res.get("declared"))
                self.add({**res, "declared": declared, "outcome": report.outcome, "duration_s": report.duration,
                          "nodeid": report.nodeid})
            if not results and ident is not None and report.outcome != "passed":
                self.add(placeholder(ident, report, "error" if report.failed else "skipped"))
        elif report.when == "setup" and ident is not None and not report.passed:
            self.add(placeholder(ident, report, "skipped" if report.skipped else "error"))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.report is None:
            return
        from harness.report.html import page_path, write_page

        self.report.finish({2: "interrupted", 3: "error"}.get(int(exitstatus), "complete"))
        self.page = page_path(session.config.getoption("--claims-html"), self.report.path, session.config.rootpath)
        if self.page is not None:
            write_page(self.report.document(), self.page)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report is None:
            return
        from harness.report.document import summary_rows

        rows = summary_rows(self.report.document()["verdicts"])
        if rows:
            terminalreporter.write_sep("=", "claim verdicts")
            for line in rows:
                terminalreporter.write_line(line)
        terminalreporter.write_line(f"claims report: {self.report.path}  "
                                    f"(rerun: pytest {shlex.join(self.report.argv)})".rstrip())
        if self.page is not None:
            terminalreporter.write_line(f"claims page: {self.page}")


def placeholder(ident: dict[str, Any], report: pytest.TestReport, outcome: str) -> dict[str, Any]:
    """A protocol that was skipped or errored before it recorded a result; its kind and its claim's
    declaration come from collection (the controller has no claim files under pytest-xdist)."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longreprtext)[-2000:]
    return {**ident, "passed": None, "outcome": outcome, "reason": reason, "nodeid": report.nodeid,
            "duration_s": report.duration, "weights": None}
