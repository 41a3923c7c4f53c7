"""The public API: what a claim module is written against, in one import (`from harness import api`).

This module is the public surface of claim-harness. A claim written against the names below keeps working
across releases; everything else in the package is internal and may move. docs/writing-a-claim.md shows a
claim built from them. The pytest fixtures a claim test takes (`lm`, `null_lm`, `claim`, `prompt_bank`,
`claim_context`, `claim_cache`, `verify_claim`, `record_claim`, `harness_options`, `model_cache`,
`published_data`) come from the plugin and are documented there too.

Claims and results
    Claim, ClaimError, load_claim: a claim folder's claim.toml, validated.
    ModelContext: what a claim's protocols share on one model (claim, model, bank, seed, batch size, a cache;
        the layer map and the prompt format); subclass it with the claim's sites. Its `params`, `control(name)`
        and `size_notes()` apply a table's `sizes` (smaller runs on tiny stand-ins and on CPU real weights).
    evaluate: a criterion ({metric: {op: value}}) on observed values: holds, fails, or None (not evaluable).
    Schema, DType: the types of a claim's [protocol] and [controls.<name>] keys; hand it to the marker,
        `pytest.mark.claim("<id>", schema=SCHEMA)`, and claim.toml is checked against it at collection.
    protocol_result, check: package one protocol's observation (criterion evaluated, scope and layer map
        recorded) and assert it is well formed (and, on the published weights, that the criterion holds).
    protocol_of, protocol_kind: the protocol name of a `[controls.<name>]` table, `<kind>:<name>` (control,
        robustness, null), and a protocol's kind.
    Effect, EffectSpec, Stated, two_sample_effect, paired_effect, interval_effect: a control's effect, an
        estimate with its CI in the units of the published effect, stated against the claim's `effect`,
        `min_fraction` and `[protocol].control_alpha`; pass it to protocol_result(effect=..., n_needed=...).
    null_weights_result, NULL_WEIGHTS_PROTOCOL: the null-weights check, the as-published protocol run on the
        `null_lm` fixture (a seeded random-weight twin of the model) and recorded as `null:random_weights`.
    verified_table, PublishedDataError: a published table of the `published_data` folder, checked against
        the sha256 its MANIFEST.toml records.
    PromptBank, BankError, load_bank: prompt banks (`[bank]` and `[categories]` tables).
Models and sites
    LoadedModel, Dims: a loaded model and the dimensions read from its config.
    resolve_site, parse_site, site_width, map_layer, SiteError, SITE_POINTS: named sites
        (`blocks.{layer}.{point}`) on every supported architecture; published layers mapped by relative depth.
Forward passes, hooks and interventions
    encode, token_counts, Window, forward_capture, Captured, Encoded: batched forwards keeping windows of
        sites, with an optional intervention (`intervene(batch, first)`) entered around each batch.
    iter_hidden_states: `output_hidden_states` per batch (embeddings, every layer, the last after the final norm).
    PromptFormat: raw text or the chat template, BOS on or off (a protocol's `chat_template` and `bos`).
    capture, edit_site, hook_count, Call, CallLog: hooks as context managers that always remove themselves.
    generate, Generation, GenerationRun: batched greedy generation with interventions active.
    generation_paths: which generation path ran a protocol's batches, and why not the graph path.
    sample_conditions, SampledCondition, SampledRun: seeded sampling (one stream per row, so arms are
        seed-matched), with edits while the prompt is read, on the KV cache, and while tokens are sampled.
    KVRows, replace_last: KV-cache surgery (other prompts' keys and values in a prefilled cache; RoPE offsets
        reported).
    zero_attention_output, scale_heads, skip_layer, patch_residual: interventions as context managers.
    patch_rows, zero_columns: a site's last rows replaced per prompt by source rows, or some of its columns
        zeroed, in a forward pass over a right-padded batch.
    attention_entropy, EntropyResult: per-layer, per-head attention entropy inside the forward.
Measurements and statistics
    stats: the statistical tests (student_t, welch_t, mann_whitney, permutation_test, paired_t, ols, ...).
    markers: behaviour scores of generated text (the n300 substring markers as published, word-boundary and
        novel markers, overlap with a source prompt).
    participation_ratio, r_v: PR of a window of activations and the R_V ratio.
    covariance_pr: PR of the mean-centred covariance with clamped eigenvalues (the layer-by-layer diagnostic's).
    measure_pr, full_rows, PRRun, Edit, rows_patched, columns_zeroed, heads_zeroed: PR of sites while another
        site is patched or ablated (an `Edit` keeps the hook's calls); every row of a site per prompt.
    measure_rv, compare_rv, RVRun: R_V per prompt for a claim's early/late layers, and the published comparison.
    TableContext, capture_rows, WindowRows, WindowRule, WINDOW_RULES, layers_from_end: R_V at an early layer and
        a late layer counted from the end, over any window up to the rows captured, under the source's rule
        (last min(W, T) tokens), full windows only, or windows without position 0; one capture per model.
    matched_spans, Matched: token-matched partners (whole-word spans of passages, from a sentence start, with
        exactly a target's token count under the model's tokenizer).
    select_prompts, merge_runs, exclusions: parts and unions of R_V runs, and their exclusion counts.
    TransferContext, TRANSFER_ARMS, PUBLISHED_ARMS, PERSISTENT_ARMS, draw_pairs, patch_calls: the n300 transfer
        family: prompt pairs, the seed-matched arms (the source's and the ones that take them apart), and the
        persistent patch's hook calls and writes.
    measure_entropies, CategoryRun, rfc, rsi, head_level_rfc: attention entropy per prompt category and the
        role-focus coefficients built on it.
    correlate_profiles, ProfileCorrelation, block_bootstrap_r, BootstrapR, fisher_n_for_power,
        misaligned_iid_rejections: two per-layer profiles correlated with the iid p and with nulls, an interval
        and a power figure that respect the autocorrelation of neighbouring layers.
"""

from __future__ import annotations

from harness.analysis import markers, stats
from harness.analysis.metrics import covariance_pr, participation_ratio, r_v
from harness.analysis.profiles import (
    BootstrapR,
    ProfileCorrelation,
    block_bootstrap_r,
    correlate_profiles,
    fisher_n_for_power,
    misaligned_iid_rejections,
)
from harness.analysis.rfc import head_level_rfc, rfc, rsi
from harness.claimkit.context import ModelContext
from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL, protocol_kind, protocol_of
from harness.claimkit.effects import EffectSpec, Stated, interval_effect, paired_effect, two_sample_effect
from harness.claimkit.gen import path_summary as generation_paths
from harness.claimkit.params import DType, Schema
from harness.claimkit.prompts import BankError, PromptBank, load_bank
from harness.claimkit.published import PublishedDataError, verified_table
from harness.claimkit.registry import Claim, ClaimError, evaluate, load_claim
from harness.claimkit.results import check, null_weights_result, protocol_result
from harness.claimkit.role import CategoryRun
from harness.claimkit.role import measure as measure_entropies
from harness.claimkit.rv import RVRun
from harness.claimkit.rv import compare as compare_rv
from harness.claimkit.rv import measure as measure_rv
from harness.claimkit.rvpatch import Edit, PRRun, columns_zeroed, full_rows, heads_zeroed, measure_pr, rows_patched
from harness.claimkit.rvwindows import RULES as WINDOW_RULES
from harness.claimkit.rvwindows import (
    Matched,
    TableContext,
    WindowRows,
    capture_rows,
    exclusions,
    layers_from_end,
    matched_spans,
    merge_runs,
    select_prompts,
)
from harness.claimkit.rvwindows import Rule as WindowRule
from harness.claimkit.transfer import ARMS as TRANSFER_ARMS
from harness.claimkit.transfer import AS_PUBLISHED as PUBLISHED_ARMS
from harness.claimkit.transfer import PERSISTENT as PERSISTENT_ARMS
from harness.claimkit.transfer import TransferContext, draw_pairs, patch_calls
from harness.claimkit.verdicts import Effect
from harness.engine.attention import EntropyResult, attention_entropy
from harness.engine.formatting import PromptFormat
from harness.engine.generation import Generation, GenerationRun, generate
from harness.engine.hooks import Call, CallLog, capture, edit_site, hook_count
from harness.engine.interventions import patch_residual, scale_heads, skip_layer, zero_attention_output
from harness.engine.kvsurgery import KVRows, replace_last
from harness.engine.models import Dims, LoadedModel
from harness.engine.rowedits import patch_rows, zero_columns
from harness.engine.runner import (
    Captured,
    Encoded,
    Window,
    encode,
    forward_capture,
    iter_hidden_states,
    token_counts,
)
from harness.engine.sampling import SampledCondition, SampledRun, sample_conditions
from harness.engine.sites import POINTS as SITE_POINTS
from harness.engine.sites import SiteError, map_layer, site_width
from harness.engine.sites import parse as parse_site
from harness.engine.sites import resolve as resolve_site

__all__ = [
    "NULL_WEIGHTS_PROTOCOL",
    "PERSISTENT_ARMS",
    "PUBLISHED_ARMS",
    "SITE_POINTS",
    "TRANSFER_ARMS",
    "WINDOW_RULES",
    "BankError",
    "BootstrapR",
    "Call",
    "CallLog",
    "Captured",
    "CategoryRun",
    "Claim",
    "ClaimError",
    "DType",
    "Dims",
    "Edit",
    "Effect",
    "EffectSpec",
    "Encoded",
    "EntropyResult",
    "Generation",
    "GenerationRun",
    "KVRows",
    "LoadedModel",
    "Matched",
    "ModelContext",
    "PRRun",
    "ProfileCorrelation",
    "PromptBank",
    "PromptFormat",
    "PublishedDataError",
    "RVRun",
    "SampledCondition",
    "SampledRun",
    "Schema",
    "SiteError",
    "Stated",
    "TableContext",
    "TransferContext",
    "Window",
    "WindowRows",
    "WindowRule",
    "attention_entropy",
    "block_bootstrap_r",
    "capture",
    "capture_rows",
    "check",
    "columns_zeroed",
    "compare_rv",
    "correlate_profiles",
    "covariance_pr",
    "draw_pairs",
    "edit_site",
    "encode",
    "evaluate",
    "exclusions",
    "fisher_n_for_power",
    "forward_capture",
    "full_rows",
    "generate",
    "generation_paths",
    "head_level_rfc",
    "heads_zeroed",
    "hook_count",
    "interval_effect",
    "iter_hidden_states",
    "layers_from_end",
    "load_bank",
    "load_claim",
    "map_layer",
    "markers",
    "matched_spans",
    "measure_entropies",
    "measure_pr",
    "measure_rv",
    "merge_runs",
    "misaligned_iid_rejections",
    "null_weights_result",
    "paired_effect",
    "parse_site",
    "participation_ratio",
    "patch_calls",
    "patch_residual",
    "patch_rows",
    "protocol_kind",
    "protocol_of",
    "protocol_result",
    "r_v",
    "replace_last",
    "resolve_site",
    "rfc",
    "rows_patched",
    "rsi",
    "sample_conditions",
    "scale_heads",
    "select_prompts",
    "site_width",
    "skip_layer",
    "stats",
    "token_counts",
    "two_sample_effect",
    "verified_table",
    "zero_attention_output",
    "zero_columns",
]
