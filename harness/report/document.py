"""The claims report: one schema-versioned JSON document per run, written atomically after every result.

Each claim test records one protocol result (a plain dict, so it crosses pytest-xdist). The controller
collects them, rewrites the document after each one (so an interrupted run keeps what it finished) and
aggregates a verdict per (claim, model) at the end.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import __version__
from harness.claimkit.verdicts import Declared, verdict

SCHEMA_VERSION = "2.0"
RESULT_KEY = "claim_harness.result"  # the user_property that carries one protocol result
PACKAGES = ("torch", "transformers", "numpy", "scipy", "pytest", "tokenizers", "accelerate")


def git_state(root: Path) -> dict[str, Any]:
    """The checkout's commit and dirty flag; HARNESS_GIT_COMMIT names the commit of a copied tree with no .git."""
    def run(*args: str) -> str | None:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        given = os.environ.get("HARNESS_GIT_COMMIT")
        return {"commit": given, "dirty": None, "source": "HARNESS_GIT_COMMIT" if given else "no git checkout"}
    return {"commit": commit, "dirty": bool(run("status", "--porcelain"))}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0], "cuda": False}
    if torch.cuda.is_available():
        info.update(cuda=True, gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
    return info


def peak_memory() -> dict[str, int | None]:
    """Peak GPU memory allocated by torch in this process, and this process's peak resident set size."""
    import resource

    import torch

    gpu = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return {"gpu_bytes": gpu, "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def jsonable(value: Any) -> Any:
    """NaN and inf become None (strict JSON); tuples become lists; numpy scalars become floats."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # anything else (a path, an enum, pytest's NOTSET) is recorded as its text


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is for everyone who can read the directory
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def aggregate(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per (claim, model) from its protocol results (harness.claimkit.verdicts.verdict)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in results:
        groups.setdefault((res["claim"], res["model"]), []).append(res)
    return [_verdict_of(claim, model, items) for (claim, model), items in sorted(groups.items())]


MAIN_KINDS = ("as_published", "rederive", "measure")


def declared_of(items: Iterable[dict[str, Any]]) -> Declared:
    """What the claim declares, as its results carry it (every worker's and host's, joined)."""
    return Declared.union(Declared.from_dict(r["declared"]) for r in items if r.get("declared"))


def _verdict_of(claim: str, model: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    declared = declared_of(items)
    judged = verdict(items, declared)
    main = [r for r in items if r["kind"] in MAIN_KINDS]
    outcomes = {r.get("outcome") for r in items}
    label, reasons = judged.verdict, list(judged.reasons)
    if main and all(r.get("outcome") == "skipped" for r in main):
        label, reasons = "skipped", [str(r.get("reason", "")) for r in main[:1]]
    elif "error" in outcomes:
        label = "error"
        reasons = [f"{r['protocol']}: error" for r in items if r.get("outcome") == "error"]
    weights = sorted({str(r.get("weights")) for r in items if r.get("weights") is not None})
    scope = next((str(r["scope"]) for r in items if r.get("scope")), None)
    return {"claim": claim, "model": model, "verdict": label, "reasons": reasons, "scope": scope,
            "as_published": {r["protocol"]: r.get("passed") for r in main}, "controls": judged.controls,
            "robustness": judged.robustness, "nulls": judged.nulls, "not_run": judged.not_run,
            "skipped_on_purpose": judged.skipped_on_purpose, "n_needed": judged.n_needed,
            "non_diagnostic": any(held is True for held in judged.nulls.values()),
            "null_weights": null_weights_status(judged.nulls, declared, model),
            "weights": weights, "diagnostic_weights": all(w in ("pretrained", "published-data") for w in weights)}


def null_weights_status(nulls: dict[str, bool | None], declared: Declared, model: str) -> str:
    """What the report says about the null-weights check of one (claim, model)."""
    from harness.claimkit.declare import NULL_WEIGHTS, NULL_WEIGHTS_PROTOCOL

    if model == "published-data":
        return "not applicable (no model)"
    if not declared.as_published:
        return "not applicable (no published criterion)"
    if NULL_WEIGHTS_PROTOCOL in nulls:
        held = nulls[NULL_WEIGHTS_PROTOCOL]
        return {True: "ran: the criterion also holds on random weights (non-diagnostic)",
                False: "ran: the criterion fails on random weights", None: "ran: not evaluable"}[held]
    if NULL_WEIGHTS in declared.skipped_on_purpose:
        return "not run: skipped on purpose (--skip-control)"
    if not declared.null_weights:
        return "not run: opted out (--no-null-weights)"
    return "not run"


@dataclass
class Report:
    path: Path
    seed: int
    argv: list[str]
    root: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    checks: dict[str, Any] = field(default_factory=dict)  # null_weights (bool), skip_control (CLAIM.CONTROL list)
    _run: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._run = {"started": self.started, "finished": None, "status": "running", "harness_version": __version__,
                     "git": git_state(self.root), "packages": package_versions(), "device": device_info(),
                     "seed": self.seed, "argv": self.argv, "checks": dict(self.checks)}

    def add(self, result: dict[str, Any]) -> None:
        self.results.append(jsonable(result))
        self.write(final=False)

    def document(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for res in self.results:
            if res.get("model_info"):
                models[res["model"]] = res["model_info"]
        return {"schema_version": SCHEMA_VERSION, "run": self._run, "models": models, "results": self.results,
                "verdicts": aggregate(self.results)}

    def write(self, final: bool = True) -> None:
        """The whole document, atomically. Rewrites during the run are compact: json's C encoder does not
        indent, and its Python encoder made the rewrites after each of 236 results cost 12.6 s of a 3-minute
        CPU suite (2026-12-01); the closing write is indented for reading."""
        indent = 2 if final else None
        atomic_write(self.path, json.dumps(self.document(), indent=indent, sort_keys=False, allow_nan=False) + "\n")

    def finish(self, status: str, **extra: Any) -> None:
        """Close the run: status, wall time, peak memory, and what else the run recorded (`extra`, e.g. the
        planned items that never ran); empty extras are left out."""
        peaks = [peak_memory()] + [r["resources"] for r in self.results if r.get("resources")]
        self._run.update(finished=time.time(), status=status, wall_s=time.time() - self.started,
                         peak_memory={key: max((p.get(key) or 0 for p in peaks), default=0) or None
                                      for key in ("gpu_bytes", "rss_bytes")})
        self._run.update({key: jsonable(value) for key, value in extra.items() if value})
        self.write()


def summary_rows(verdicts: list[dict[str, Any]]) -> list[str]:
    """The terminal table that closes every run: verdict, controls passed, and why."""
    if not verdicts:
        return []
    width = max(len(v["claim"]) for v in verdicts)
    mwidth = max(len(v["model"]) for v in verdicts)
    lines = [f"{'claim':<{width}}  {'model':<{mwidth}}  {'verdict':<15} controls passed  notes"]
    for v in verdicts:
        ctl = v["controls"]
        passed = sum(1 for x in ctl.values() if x == "pass")
        lines.append(f"{v['claim']:<{width}}  {v['model']:<{mwidth}}  {v['verdict']:<15} "
                     f"{passed}/{len(ctl):<13} {'; '.join(verdict_notes(v))}".rstrip())
    return lines


def verdict_notes(v: dict[str, Any]) -> list[str]:
    """Why a verdict is what it is, in short: non-diagnostic criterion, n needed, what did not run, weights."""
    notes = []
    if v.get("non_diagnostic"):
        notes.append("published criterion non-diagnostic")
    if v.get("scope") == "generalisation":
        notes.append("generalisation: evidence about the protocol on this model, not about the published claim")
    for protocol, n in (v.get("n_needed") or {}).items():
        notes.append(f"{protocol} underpowered" + (f" (n >= {n} per group needed)" if n else " (n needed unknown)"))
    if v.get("not_run"):
        notes.append("not run: " + ", ".join(v["not_run"]))
    if v.get("skipped_on_purpose"):
        notes.append("skipped on purpose: " + ", ".join(v["skipped_on_purpose"]))
    if str(v.get("null_weights", "")).startswith("not run") and v["verdict"] not in ("skipped", "error"):
        notes.append("null-weights check " + str(v["null_weights"]))
    if not v["diagnostic_weights"] and v["verdict"] not in ("skipped", "error"):
        notes.append("weights " + "/".join(v["weights"]) + ": not evidence about the published model")
    return notes
