"""Fault injection (issue 12): what survives a fault, and that nothing already written is lost.

- SIGINT and SIGTERM at seeded-random points of a claims run: the report is kept (the previous one, if the
  signal came before the first result), its status says interrupted, it names what never ran, no temporary
  file or folder is left, and a rerun completes it.
- A pytest-xdist worker killed mid-test: the controller keeps every other result and records the lost test.
- The disk full while the report is written: the previous report survives byte for byte (atomic write); a
  later write succeeds once there is room; a run that never could write says so and exits non-zero.
- An exception inside every kind of hook, at a seeded-random call: no hook is left and the model gives its
  bare outputs again.

Each fault is one test case; each records `faults_injected`, `survived` and `data_lost` as junit properties,
which the issue's closing note counts. The default suite injects a sample; `-m slow` runs every point.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any

import pytest
import torch
from plugin_runs import demo_claim, subprocess_run

from harness.engine import hooks
from harness.engine.attention import AttentionEntropy, attention_entropy
from harness.engine.generation import generate
from harness.engine.hooks import StopForward, capture, edit_site, hook_count, stop_after
from harness.engine.interventions import patch_residual, scale_heads, skip_layer, zero_attention_output
from harness.engine.models import LoadedModel

SEED = 12  # the number: every "random" point below is drawn from this seed
ITEMS = 6  # the demo claim: 3 protocols x 2 tiny models
INJECTOR = r'''
"""Injects the fault that FAULT_PLAN names, at the N-th event of its kind, and logs finished results."""
import json, os, resource, signal
from pathlib import Path

import pytest

PLAN = json.loads(os.environ.get("FAULT_PLAN") or "null")
LOG = Path(os.environ["FAULT_LOG"])
COUNT = {}


def event(kind):
    COUNT[kind] = COUNT.get(kind, 0) + 1
    if PLAN and PLAN["event"] == kind and COUNT[kind] == PLAN["index"]:
        try:  # one fault per run, also across pytest-xdist workers and a restarted worker
            os.close(os.open(LOG.parent / "fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), getattr(signal, PLAN["signal"]))


def pytest_configure(config):
    if PLAN and PLAN.get("fsize"):  # the disk is full: any file grows past this many bytes only with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (PLAN["fsize"], resource.RLIM_INFINITY))
    real = os.replace

    def replace(src, dst, *args, **kwargs):  # between the temporary file and the report: mid-write
        if str(dst).endswith(".json"):
            event("replace")
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def pytest_collection_finish(session):
    event("collected")


def pytest_runtest_setup(item):
    event("setup")


def pytest_runtest_call(item):
    event("call")


def pytest_runtest_teardown(item):
    event("teardown")


FINISHED = []


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    """After the plugin has recorded the result: log it as finished, with the report file's hash then. The log
    goes to the process's real stderr (a pipe), which no file size limit touches."""
    if report.when == "call" and report.passed:
        report_file = Path("results/claims.json")
        digest = __import__("hashlib").sha256(report_file.read_bytes()).hexdigest() if report_file.exists() else None
        FINISHED.append(report.nodeid)
        os.write(2, ("FAULTLOG " + json.dumps({"nodeid": report.nodeid, "report_sha256": digest}) + "\n").encode())
        if PLAN and PLAN.get("fsize_until") == len(FINISHED):
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    event("logreport")
'''


@pytest.fixture
def claims_run(pytester: pytest.Pytester, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Run the demo claim in a subprocess with the fault of `plan`; return what survived."""
    demo_claim(pytester.path)
    (pytester.path / "conftest.py").write_text(INJECTOR, encoding="utf-8")
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    def run(plan: dict[str, Any] | None, *args: str) -> dict[str, Any]:
        log = tmp_path / "faults" / "finished.jsonl"
        log.parent.mkdir(exist_ok=True)
        for old in log.parent.iterdir():
            old.unlink()
        env = {"FAULT_PLAN": json.dumps(plan), "FAULT_LOG": str(log), "TMPDIR": str(scratch)}
        done = subprocess_run(pytester.path, *args, env=env)
        report = pytester.path / "results" / "claims.json"
        return {"ret": done.returncode, "output": done.stdout + done.stderr,
                "report": report.read_bytes() if report.exists() else None,
                "finished": [json.loads(line.removeprefix("FAULTLOG ")) for line in done.stderr.splitlines()
                             if line.startswith("FAULTLOG ")],
                "fired": (log.parent / "fired").exists(),
                "leftovers": sorted(p.name for p in (pytester.path / "results").glob(".claims.json.*"))
                + sorted(p.name for p in scratch.iterdir() if p.name.startswith("claim-harness-"))}

    run.folder = pytester.path  # type: ignore[attr-defined]
    return run


def write_previous(run: Callable[..., dict[str, Any]]) -> bytes:
    """An earlier run's report where this run will write its own."""
    previous = json.dumps({"an earlier run's report": True, "results": ["precious"]}).encode()
    folder = run.folder / "results"  # type: ignore[attr-defined]
    folder.mkdir(exist_ok=True)
    (folder / "claims.json").write_bytes(previous)
    return previous


def count(record: Callable[[str, object], None], lost: int) -> None:
    record("faults_injected", 1)
    record("data_lost", lost)
    record("survived", int(lost == 0))


# --------------------------------------------------------------------------------------- signals --

POINTS = [("collected", 1), *((kind, i) for kind in ("setup", "call", "teardown", "logreport", "replace")
                              for i in range(1, ITEMS + 1))]


def opted_in(config: pytest.Config) -> bool:
    """Whether the run asked for the slow tier by name (`-m slow`): only then is every point injected."""
    expression = config.getoption("markexpr") or ""
    return "slow" in expression and "not slow" not in expression


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Signals: one point by default (a SIGINT mid-run), every point of both signals under `-m slow` (minutes
    on two cores: the CI's slow tier). A run that names neither (`-m "not slow"` is the default) samples
    nothing else: the seeded SIGTERM point below is marked slow too."""
    if metafunc.function.__name__ != "test_a_signal_keeps_the_report_and_a_rerun_completes_it":
        return
    if opted_in(metafunc.config):
        points = [pytest.param(sig, kind, index, marks=pytest.mark.slow, id=f"{sig}-{kind}{index}")
                  for sig in ("SIGINT", "SIGTERM") for kind, index in POINTS]
    else:
        points = [pytest.param("SIGINT", "call", 3, id="SIGINT-call3"),
                  pytest.param("SIGTERM", *random.Random(SEED).choice(POINTS[1:]), id="SIGTERM-seeded",
                               marks=pytest.mark.slow)]
    metafunc.parametrize(("sig", "kind", "index"), points)


def test_a_signal_keeps_the_report_and_a_rerun_completes_it(claims_run: Callable[..., dict[str, Any]], sig: str,
                                                            kind: str, index: int,
                                                            record_property: Callable[[str, object], None]) -> None:
    previous = write_previous(claims_run)
    got = claims_run({"signal": sig, "event": kind, "index": index})
    assert got["fired"] and got["ret"] == pytest.ExitCode.INTERRUPTED, got["output"][-2000:]
    assert got["leftovers"] == []  # no half-written report, no temporary folder
    assert got["report"] is not None
    finished = {f["nodeid"] for f in got["finished"]}
    if got["report"] == previous:
        assert not finished  # nothing recorded before the signal: the previous report, intact
        lost = 0
    else:
        doc = json.loads(got["report"])
        recorded = {r["nodeid"] for r in doc["results"]}
        lost = len(finished - recorded)
        assert doc["run"]["status"] == "interrupted"
        assert recorded | {i["nodeid"] for i in doc["run"].get("not_run", [])} >= finished
        assert len(recorded) + len(doc["run"].get("not_run", [])) == ITEMS  # every planned test accounted for
    count(record_property, lost)
    assert lost == 0
    again = claims_run(None)
    redone = json.loads(again["report"])
    assert again["ret"] == 0 and redone["run"]["status"] == "complete" and "not_run" not in redone["run"]
    assert len(redone["results"]) == ITEMS


# ----------------------------------------------------------------------------------- xdist crash --

@pytest.mark.parametrize("restarts", [pytest.param("rerun", marks=pytest.mark.slow),
                                      pytest.param("no-restart", marks=pytest.mark.slow)])
def test_a_killed_xdist_worker_loses_nothing_else(claims_run: Callable[..., dict[str, Any]], restarts: str,
                                                  record_property: Callable[[str, object], None],
                                                  pytestconfig: pytest.Config) -> None:
    """A worker killed mid-test. pytest-xdist replaces it and reruns the test: the report has its result and
    records the crash. With --max-worker-restart 0 nothing reruns it: the test is an error, the worker's queue
    never ran, and every other worker's result is kept."""
    if restarts == "rerun" and not opted_in(pytestconfig):
        pytest.skip("a second xdist run: only when -m slow is asked for by name (the no-restart case runs)")
    extra = ["--max-worker-restart", "0"] if restarts == "no-restart" else []
    got = claims_run({"signal": "SIGKILL", "event": "call", "index": 2}, "-n", "2", "--dist", "loadgroup", *extra)
    assert got["fired"] and got["ret"] == pytest.ExitCode.TESTS_FAILED, got["output"][-3000:]
    doc = json.loads(got["report"])
    (crash,) = doc["run"]["worker_crashes"]
    assert "crashed while running" in crash["reason"]
    finished = {f["nodeid"] for f in got["finished"]}
    measured = {r["nodeid"] for r in doc["results"] if r["outcome"] == "passed"}
    lost = len(finished - measured)
    assert lost == 0 and doc["run"]["status"] == "complete"
    crashed = next(v for v in doc["verdicts"] if any(crash["nodeid"] == r["nodeid"] and r["model"] == v["model"]
                                                     for r in doc["results"]))
    if restarts == "rerun":
        assert crash["nodeid"] in measured and len(measured) == ITEMS and "not_run" not in doc["run"]
        assert crashed["verdict"] != "error"
    else:
        errors = [r for r in doc["results"] if r["outcome"] == "error"]
        assert [r["nodeid"] for r in errors] == [crash["nodeid"]] and "crashed" in errors[0]["reason"]
        assert len(measured) + 1 + len(doc["run"].get("not_run", [])) == ITEMS
        assert crashed["verdict"] == "error"  # a lost protocol never leaves a clean verdict behind
    count(record_property, lost)


# -------------------------------------------------------------------------------------- disk full --

def test_a_full_disk_leaves_the_previous_report_and_a_later_write_completes_it(
        claims_run: Callable[..., dict[str, Any]], record_property: Callable[[str, object], None]) -> None:
    before = hashlib.sha256(write_previous(claims_run)).hexdigest()
    got = claims_run({"signal": None, "event": None, "index": 0, "fsize": 1024, "fsize_until": 3})
    seen = [f["report_sha256"] for f in got["finished"]]
    assert seen[:3] == [before] * 3  # while the disk was full, the report on disk was the previous one, whole
    assert got["ret"] == 0 and got["leftovers"] == [], got["output"][-2000:]
    doc = json.loads(got["report"])
    assert doc["run"]["status"] == "complete" and len(doc["results"]) == ITEMS  # nothing lost once there is room
    said = [line for line in got["output"].splitlines() if "write(s) of the claims report failed" in line]
    assert len(said) == 1 and said[0].startswith("3 write(s)") and "File too large" in said[0]
    count(record_property, ITEMS - len(doc["results"]))


def test_a_disk_that_stays_full_fails_the_run_and_keeps_the_previous_report(
        claims_run: Callable[..., dict[str, Any]], record_property: Callable[[str, object], None]) -> None:
    previous = write_previous(claims_run)
    got = claims_run({"signal": None, "event": None, "index": 0, "fsize": 1024})
    assert got["ret"] == pytest.ExitCode.TESTS_FAILED, got["output"][-2000:]
    assert got["report"] == previous and got["leftovers"] == []
    said = [line for line in got["output"].splitlines() if "claims report NOT written" in line]
    assert len(said) == 1 and "File too large" in said[0] and "the previous file there is unchanged" in said[0]
    count(record_property, 0)  # the run's results are not saved, and the summary says so: none silently lost


# ----------------------------------------------------------------------------- exceptions in hooks --

class FaultInjected(RuntimeError):
    """Raised inside a hook by the injector."""


Manager = Callable[[LoadedModel], AbstractContextManager[Any]]


def forwarded(lm: LoadedModel, manager: Manager) -> None:
    """One padded forward inside the manager's block."""
    ids = lm.tokenizer(["the cat sat on the mat", "a b"], return_tensors="pt", padding=True)
    with manager(lm), torch.no_grad(), suppress(StopForward):
        lm.model(**ids)


def generated(lm: LoadedModel, manager: Manager) -> None:
    """Greedy generation with the manager entered around each batch (prefill and cached decode steps)."""
    generate(lm, ["the cat sat", "a b c d"], 3, intervention=lambda _batch: manager(lm))


KINDS: dict[str, tuple[Callable[[LoadedModel, Manager], None], Manager]] = {
    "capture": (forwarded, lambda lm: capture(lm.model, ["blocks.1.attn.v", "blocks.2.resid_post"])),
    "edit_input": (forwarded, lambda lm: edit_site(lm.model, "blocks.1.resid_pre", lambda t, _c: t * 1.0)),
    "edit_output": (forwarded, lambda lm: edit_site(lm.model, "blocks.2.mlp.out", lambda t, _c: t)),
    "stop_after": (forwarded, lambda lm: stop_after(lm.model, 1)),
    "attention_entropy": (forwarded, lambda lm: attention_entropy(lm.model, [0, 1], cuda_graphs=False)),
    "zero_attention": (generated, lambda lm: zero_attention_output(lm.model, 1)),
    "skip_layer": (generated, lambda lm: skip_layer(lm.model, 1)),
    "scale_heads": (generated, lambda lm: scale_heads(lm.model, 1, [0], 0.0)),
    "patch_residual": (generated, lambda lm: patch_residual(lm.model, 1, torch.zeros(4, lm.dims.d_model), window=2)),
}


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int | None], list[int]]]:
    """inject(k): every hook body raises FaultInjected at its k-th call (None: count calls, raise nothing)."""
    calls: list[int] = []
    real_primary, real_record = hooks._primary, AttentionEntropy._record

    def arm(at: int | None) -> list[int]:
        calls.clear()

        def tick() -> None:
            calls.append(1)
            if at is not None and len(calls) == at:
                raise FaultInjected(f"fault injected at hook call {at}")

        def primary(value: Any) -> torch.Tensor:
            tick()
            return real_primary(value)

        def record(self: AttentionEntropy, *args: Any) -> None:
            tick()
            real_record(self, *args)

        monkeypatch.setattr(hooks, "_primary", primary)
        monkeypatch.setattr(AttentionEntropy, "_record", record)
        return calls

    yield arm


FAMILIES = ("tiny-mistral", "tiny-qwen2", "tiny-llama")


@pytest.mark.parametrize("name", list(KINDS))
def test_an_exception_inside_a_hook_leaves_no_hook_and_bare_outputs(tiny_models: dict[str, LoadedModel], name: str,
                                                                     inject: Callable[[int | None], list[int]],
                                                                     record_property: Callable[[str, object], None],
                                                                     ) -> None:
    """Each kind on one family (the three take turns), at a seeded-random call of its hooks."""
    tiny_lm = tiny_models[FAMILIES[list(KINDS).index(name) % len(FAMILIES)]]
    run, manager = KINDS[name]
    ids = tiny_lm.tokenizer(["the cat sat on the mat"], return_tensors="pt")
    with torch.no_grad():
        bare = tiny_lm.model(**ids).logits
    calls = inject(None)
    run(tiny_lm, manager)  # a clean run: how many hook calls there are to pick from
    total = len(calls)
    assert total >= 1
    at = random.Random(f"{SEED}-{name}-{tiny_lm.id}").randint(1, total)
    inject(at)
    with pytest.raises(FaultInjected, match=f"call {at}"):
        run(tiny_lm, manager)
    assert hook_count(tiny_lm.model) == 0
    assert tiny_lm.model.config._attn_implementation == "sdpa"
    inject(None)
    with torch.no_grad():
        assert torch.equal(tiny_lm.model(**ids).logits, bare)
    count(record_property, 0)
