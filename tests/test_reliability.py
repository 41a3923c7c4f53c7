"""Reliability (issue 7): bad input, missing weights, non-finite activations, OOM, interruption, determinism,
hook hygiene and device assignment. Each failure mode gets a clear error or skip and loses nothing computed."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from claims.rv_contraction.protocols import PROTOCOLS
from harness import plugin_installed
from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import get_claim
from harness.claimkit.rv import Context, layers_for
from harness.engine.hooks import edit_site, hook_count
from harness.engine.models import load
from harness.engine.runner import Window, forward_capture
from harness.engine.specs import get_spec
from harness.plugin.options import worker_devices

# A subprocess pytest loads the plugin through its entry point when the package is installed, else via -p.
PLUGIN_ARGS = [] if plugin_installed() else ["-p", "harness.plugin"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load(get_spec("tiny-mistral-instruct"), cache_dir=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def ctx(tiny):
    claim = get_claim("rv_contraction")
    return Context(claim, tiny, bank_for(claim), seed=0, batch_size=8)


def overflow_at_late_site(ctx, which):
    """Write inf into the late v output of the prompts `which(prompt)` selects (simulated fp16 overflow)."""
    _, late = layers_for(ctx.claim, ctx.lm)

    @contextmanager
    def around(prompts, _window, _fmt):
        flags = torch.tensor([which(p) for p in prompts])
        seen = {"rows": 0}

        def inject(v, _call):
            rows = flags[seen["rows"] : seen["rows"] + v.shape[0]]
            seen["rows"] += v.shape[0]
            return torch.where(rows[:, None, None], torch.full_like(v, float("inf")), v)

        with edit_site(ctx.lm.model, f"blocks.{late}.attn.v", inject):
            yield

    return around


def test_non_finite_activations_are_counted_not_dropped(ctx):
    victims = set(ctx.bank.category("recursive")[:3])
    spoiled = Context(ctx.claim, ctx.lm, ctx.bank, around_run=overflow_at_late_site(ctx, victims.__contains__))
    result = PROTOCOLS["as_published"](spoiled)
    assert result["exclusions"]["non_finite_activation"] == 3
    assert result["n"]["recursive"] == len(ctx.bank.category("recursive")) - 3
    assert result["passed"] is not None


def test_all_non_finite_makes_the_result_inconclusive(ctx):
    spoiled = Context(ctx.claim, ctx.lm, ctx.bank, around_run=overflow_at_late_site(ctx, lambda _p: True))
    result = PROTOCOLS["as_published"](spoiled)
    assert result["passed"] is None
    assert result["exclusions"]["non_finite_activation"] == 16
    assert "inconclusive" in result["notes"][0]
    assert hook_count(ctx.lm.model) == 0


def test_out_of_memory_halves_the_batch_and_keeps_the_values(ctx, monkeypatch):
    prompts = ctx.bank.category("recursive_extended")[:12]
    sites = ["blocks.2.attn.v", "blocks.9.attn.v"]
    expected = forward_capture(ctx.lm, prompts, sites, Window(16), batch_size=8)
    base = ctx.lm.model.base_model
    real = base.forward

    def small_batches_only(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 3:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "forward", small_batches_only)
    got = forward_capture(ctx.lm, prompts, sites, Window(16), batch_size=8)
    assert got.halvings == 2  # 8 -> 4 -> 2
    for site in sites:
        torch.testing.assert_close(got.windows[site], expected.windows[site], atol=1e-5, rtol=1e-5)


def test_out_of_memory_at_batch_one_is_raised(ctx, monkeypatch):
    def always(*_args, **_kwargs):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(ctx.lm.model.base_model, "forward", always)
    with pytest.raises(torch.OutOfMemoryError):
        forward_capture(ctx.lm, ["a b c"], ["blocks.1.attn.v"], Window(4), batch_size=2)


def test_no_hook_survives_an_exception_inside_a_protocol(ctx):
    @contextmanager
    def explode(_prompts, _window, _fmt):
        with edit_site(ctx.lm.model, "blocks.3.attn.v", lambda v, c: None):
            raise RuntimeError("boom inside the claim")
            yield  # pragma: no cover

    broken = Context(ctx.claim, ctx.lm, ctx.bank, around_run=explode)
    for name in ("as_published", "control:token_matched", "control:bos_excluded"):
        with pytest.raises(RuntimeError, match="boom"):
            PROTOCOLS[name](broken)
        assert hook_count(ctx.lm.model) == 0


@pytest.mark.parametrize(("worker", "per_model", "count", "expected"), [
    (0, 1, 0, ["cpu"]),
    (0, 1, 2, ["cuda:0"]),
    (1, 1, 2, ["cuda:1"]),
    (3, 1, 2, ["cuda:1"]),
    (0, 2, 4, ["cuda:0", "cuda:1"]),
    (1, 2, 4, ["cuda:2", "cuda:3"]),
])
def test_each_worker_gets_its_own_gpus(worker, per_model, count, expected):
    assert worker_devices(None, per_model, worker, count) == expected


def test_impossible_device_requests_fail_clearly():
    with pytest.raises(pytest.UsageError, match="only 2 GPU"):
        worker_devices(None, 4, 0, 2)
    with pytest.raises(pytest.UsageError, match="no CUDA device"):
        worker_devices("cuda", 1, 0, 0)
    with pytest.raises(pytest.UsageError, match=r"--device cuda:2: 2 GPU\(s\) visible \(cuda:0-cuda:1\)"):
        worker_devices("cuda:2", 1, 0, 2)


def test_a_gpu_named_by_number_is_the_one_used():
    assert worker_devices("cuda:1", 1, 0, 2) == ["cuda:1"]
    assert worker_devices("cuda:1", 1, 3, 2) == ["cuda:1"]  # every worker: the user named one GPU


RECORDING_TESTS = """
import pytest

def test_first(record_claim):
    record_claim({"claim": "c", "model": "m", "protocol": "as_published", "kind": "as_published",
                  "passed": True, "observed": {"x": 1.0}, "weights": "tiny"})

def test_second():
    raise KeyboardInterrupt
"""


@pytest.mark.slow  # a subprocess run; tests/test_faults.py's SIGINT point covers the same in the default suite
def test_interrupted_run_keeps_finished_results(pytester):
    pytester.makepyfile(RECORDING_TESTS)
    out = pytester.path / "claims.json"
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, f"--claims-json={out}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    doc = json.loads(out.read_text())
    assert doc["run"]["status"] == "interrupted"
    assert [r["protocol"] for r in doc["results"]] == ["as_published"]


def test_malformed_claim_file_fails_at_collection(pytester):
    bad = pytester.mkdir("claims_bad")
    (bad / "broken").mkdir()
    (bad / "broken" / "claim.toml").write_text("[claim]\nid = 'broken'\nvresion = 1\n")
    pytester.makepyfile("def test_nothing():\n    assert True\n")
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, f"--claims-dir={bad}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*broken/claim.toml*"])


MODEL_TEST = """
import pytest
pytestmark = pytest.mark.claim("rv_contraction")

def test_needs_weights(lm):
    assert lm is not None
"""


@pytest.mark.slow  # a subprocess run; test_bad_input.py's GPU run without weights covers the skip by default
def test_missing_weights_skip_with_the_fix(pytester):
    """Weights not in the cache skip (a bad --model-path is an error instead: test_bad_input.py)."""
    pytester.makepyfile(MODEL_TEST)
    out = pytester.path / "claims.json"
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, "--models", "mistral-7b-instruct-v0.2", "-rs",
                                           f"--claims-json={out}", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*mistral-7b-instruct-v0.2*63a8b081*--model-path mistral-7b-instruct-v0.2=DIR*"])
    (verdict,) = json.loads(out.read_text())["verdicts"]
    assert verdict["verdict"] == "skipped"


VOLATILE = {"duration_s", "started", "finished", "wall_s", "peak_memory", "resources", "argv"}


def _stable(doc):
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


def run_rv_claim(pytester, name, *args):
    """Run claims/rv_contraction/test_rv_contraction.py in a subprocess pytest with `args`; return its claims report."""
    pytester.makepyfile(test_rv="import pytest\n"
                        "from claims.rv_contraction.test_rv_contraction import test_rv_contraction  # noqa: F401\n"
                        "pytestmark = pytest.mark.claim('rv_contraction')\n")
    root = str(Path(__file__).resolve().parents[1])
    out = pytester.path / f"{name}.json"
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, *args, f"--claims-json={out}", "-p", "no:cacheprovider",
                                           f"--rootdir={root}", "-o", f"pythonpath={root}")
    assert result.ret == 0, result.outlines[-20:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_same_seed_same_report_and_seed_is_recorded(pytester):
    docs = [run_rv_claim(pytester, name, "--models", "tiny-llama-instruct", "-k", "as_published or permutation",
                         f"--claim-seed={seed}") for seed, name in ((0, "a"), (0, "b"), (5, "c"))]
    assert _stable(docs[0])["results"] == _stable(docs[1])["results"]
    assert docs[0]["run"]["seed"] == 0 and docs[2]["run"]["seed"] == 5
    assert _stable(docs[0])["results"] != _stable(docs[2])["results"]


@pytest.mark.slow
def test_xdist_workers_give_the_serial_report(pytester):
    """Two xdist workers grouped by model: the controller's report holds the same results as a serial run."""
    docs = [run_rv_claim(pytester, name, *extra, "--models", "tiny-llama-instruct,tiny-qwen2-instruct",
                         "-k", "as_published")
            for name, extra in (("serial", []), ("xdist", ["-n", "2", "--dist", "loadgroup"]))]

    def keyed(doc):
        return {(r["model"], r["protocol"]): _stable(r) for r in doc["results"]}

    volatile = ("worker", "nodeid")  # xdist appends "@<group>" to node ids
    assert ({k: {f: v for f, v in r.items() if f not in volatile} for k, r in keyed(docs[0]).items()}
            == {k: {f: v for f, v in r.items() if f not in volatile} for k, r in keyed(docs[1]).items()})
    assert docs[1]["run"]["status"] == "complete"
    workers = {}
    for res in docs[1]["results"]:
        workers.setdefault(res["model"], set()).add(res["worker"])
    assert all(len(w) == 1 for w in workers.values()), f"a model's tests ran on several workers: {workers}"
    assert {w for ws in workers.values() for w in ws} == {"gw0", "gw1"}
