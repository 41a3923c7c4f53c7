"""Look at a page as a person would: headless Chromium driven over its DevTools pipe, standard library only.

`inspect_page(path)` loads a local HTML file in Debian's `chromium` (`--remote-debugging-pipe`: commands on
fd 3, replies on fd 4, each a JSON message ended by a NUL byte), and returns what the browser saw: console
errors, uncaught exceptions and failed loads; every image with its decoded and laid-out size; the cells of
the verdict grid; and a PNG screenshot. Used by tests/test_browser.py and `python -m harness report
--screenshot`.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get update && apt-get install -y chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe")
IMAGES_JS = """(async () => Promise.all(Array.from(document.images, async (img) => {
  let decoded = true;
  try { await img.decode(); } catch (e) { decoded = false; }
  const box = img.getBoundingClientRect();
  return {alt: img.alt, decoded: decoded, natural: [img.naturalWidth, img.naturalHeight],
          box: [box.width, box.height]};
})))()"""
GRID_JS = """Array.from(document.querySelectorAll('table.grid td[data-claim]'),
  td => [td.dataset.claim, td.dataset.model, td.dataset.verdict])"""


# Chromium reads the pipe on fd 3 and writes on fd 4. subprocess keeps inherited fds at their numbers, so a
# tiny trampoline moves them there and execs Chromium (a preexec_fn would not be safe in a threaded process).
ONTO_FDS_3_AND_4 = """import os, sys
ends = [os.dup(int(fd)) for fd in sys.argv[1:3]]
for target, fd in zip((3, 4), ends):
    os.dup2(fd, target)
    os.set_inheritable(target, True)
for fd in {int(fd) for fd in sys.argv[1:3]} - {3, 4}:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or did not answer."""


@dataclass
class PageCheck:
    """What the browser saw."""

    errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    grid: list[list[str]] = field(default_factory=list)
    screenshot: bytes = b""


def chromium() -> str | None:
    """The Chromium executable, or None where it is not installed."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


class DevTools:
    """One Chromium process and its DevTools pipe; a context manager that always ends the process."""

    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        self.timeout, self._id, self._buffer = timeout, 0, b""
        self.events: list[dict[str, Any]] = []  # DevTools events, in arrival order
        self._profile = tempfile.mkdtemp(prefix="claim-harness-chromium-")
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        ends = (to_browser, from_browser)
        command = [sys.executable, "-c", ONTO_FDS_3_AND_4, *map(str, ends), executable, *FLAGS,
                   f"--user-data-dir={self._profile}", "about:blank"]
        self.process = subprocess.Popen(command, pass_fds=ends, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for fd in (self._out, self._in):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise BrowserError(f"chromium did not answer within {self.timeout:.0f} s")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed the DevTools pipe (exit status {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") != self._id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return dict(reply.get("result", {}))

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._receive(deadline))

    def evaluate(self, expression: str, session: str) -> Any:
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True}, session)
        if "exceptionDetails" in reply:
            raise BrowserError(f"evaluating a check failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the DevTools events."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(f"{details.get('text')}: {details.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            found.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return found


def inspect_page(page: Path, *, width: int = 1400, height: int = 2000, scale: float = 1.0,
                 timeout: float = 60.0) -> PageCheck:
    """Load `page`, collect what the browser reports, and take a width x height screenshot (times `scale`)."""
    executable = chromium()
    if executable is None:
        raise BrowserError(f"chromium is not installed (looked for {CHROMIUM}); install it: {INSTALL}")
    with DevTools(executable, timeout) as tools:
        target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable", session=session)
        tools.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                          "deviceScaleFactor": 1, "mobile": False}, session)
        tools.call("Page.navigate", {"url": page.resolve().as_uri()}, session)
        tools.wait_for("Page.loadEventFired")
        check = PageCheck(images=list(tools.evaluate(IMAGES_JS, session)),
                          grid=list(tools.evaluate(GRID_JS, session)))
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": scale}
        shot = tools.call("Page.captureScreenshot", {"format": "png", "clip": clip}, session)
        check.screenshot = base64.b64decode(shot["data"])
        check.errors = console_errors(tools.events)
    return check
