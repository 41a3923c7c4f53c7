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
from harness.claimkit.registry import verdict

SCHEMA_VERSION = "1.0"
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
    """One verdict per (claim, model) from its protocol results."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in results:
        groups.setdefault((res["claim"], res["model"]), []).append(res)
    return [_verdict_of(claim, model, items) for (claim, model), items in sorted(groups.items())]


def _verdict_of(claim: str, model: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    main = [r for r in items if r["kind"] in ("as_published", "rederive")]
    controls = {r["protocol"]: r.get("passed") for r in items if r["kind"] == "control"}
    outcomes = {r.get("outcome") for r in items}
    if main and all(r.get("outcome") == "skipped" for r in main):
        label = "skipped"
    elif "error" in outcomes:
        label = "error"
    else:
        held = [r.get("passed") for r in main]
        first = None if not held or None in held else all(held)
        label = verdict(first, controls)
    weights = sorted({str(r.get("weights")) for r in items})
    scope = next((str(r["scope"]) for r in items if r.get("scope")), None)
    return {"claim": claim, "model": model, "verdict": label, "scope": scope,
            "as_published": {r["protocol"]: r.get("passed") for r in main}, "controls": controls,
            "non_diagnostic": any(r.get("non_diagnostic") for r in items), "weights": weights,
            "diagnostic_weights": all(w in ("pretrained", "published-data") for w in weights)}


@dataclass
class Report:
    path: Path
    seed: int
    argv: list[str]
    root: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    _run: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._run = {"started": self.started, "finished": None, "status": "running", "harness_version": __version__,
                     "git": git_state(self.root), "packages": package_versions(), "device": device_info(),
                     "seed": self.seed, "argv": self.argv}

    def add(self, result: dict[str, Any]) -> None:
        self.results.append(jsonable(result))
        self.write()

    def document(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for res in self.results:
            if res.get("model_info"):
                models[res["model"]] = res["model_info"]
        return {"schema_version": SCHEMA_VERSION, "run": self._run, "models": models, "results": self.results,
                "verdicts": aggregate(self.results)}

    def write(self) -> None:
        atomic_write(self.path, json.dumps(self.document(), indent=2, sort_keys=False, allow_nan=False) + "\n")

    def finish(self, status: str) -> None:
        peaks = [peak_memory()] + [r["resources"] for r in self.results if r.get("resources")]
        self._run.update(finished=time.time(), status=status, wall_s=time.time() - self.started,
                         peak_memory={key: max((p.get(key) or 0 for p in peaks), default=0) or None
                                      for key in ("gpu_bytes", "rss_bytes")})
        self.write()


def summary_rows(verdicts: list[dict[str, Any]]) -> list[str]:
    """The terminal table that closes every run."""
    if not verdicts:
        return []
    width = max(len(v["claim"]) for v in verdicts)
    mwidth = max(len(v["model"]) for v in verdicts)
    lines = [f"{'claim':<{width}}  {'model':<{mwidth}}  {'verdict':<15} controls passed  notes"]
    for v in verdicts:
        ctl = v["controls"]
        passed = sum(1 for x in ctl.values() if x)
        notes = []
        if v["non_diagnostic"]:
            notes.append("published criterion non-diagnostic")
        if v.get("scope") == "generalisation":
            notes.append("generalisation: evidence about the protocol on this model, not about the published claim")
        if not v["diagnostic_weights"] and v["verdict"] not in ("skipped", "error"):
            notes.append("weights " + "/".join(v["weights"]) + ": not evidence about the published model")
        lines.append(f"{v['claim']:<{width}}  {v['model']:<{mwidth}}  {v['verdict']:<15} "
                     f"{passed}/{len(ctl):<13} {'; '.join(notes)}")
    return lines
