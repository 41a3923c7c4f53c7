"""Command line: `python -m harness <command> ...`.

Each command lives in its own module, which exposes `main(argv: list[str]) -> int`; it is imported only when
that command runs, so `--help` stays fast and a missing optional dependency only affects its own command.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "replay": ("harness.claimkit.replay", "re-derive published summary figures from a source's data table"),
    "report": ("harness.report.html", "render a claims JSON report as a self-contained HTML page"),
    "merge": ("harness.report.tools", "merge JSON reports from several workers or hosts"),
    "diff": ("harness.report.tools", "compare two JSON reports"),
    "validate": ("harness.report.tools", "validate a JSON report against the schema"),
}


def usage() -> str:
    lines = ["usage: python -m harness <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(usage() + "\n")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"unknown command {name!r}; known: {', '.join(COMMANDS)}\n")
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name in ("merge", "diff", "validate"):
        rest = [name, *rest]
    return int(module.main(rest))


if __name__ == "__main__":
    raise SystemExit(main())
