"""The public API: what a claim module is written against, in one import (`from harness import api`).

This module is the public surface of claim-harness. A claim written against the names below keeps working
across releases; everything else in the package is internal and may move. docs/writing-a-claim.md shows a
claim built from them. The pytest fixtures a claim test takes (`lm`, `claim`, `prompt_bank`, `record_claim`,
`harness_options`, `model_cache`, `published_data`) come from the plugin and are documented there too.

Claims and results
    Claim, ClaimError, load_claim: a claim folder's claim.toml, validated.
    evaluate: a criterion ({metric: {op: value}}) on observed values: holds, fails, or None (not evaluable).
    protocol_result, check: package one protocol's observation (criterion evaluated, scope and layer map
        recorded) and assert it is well formed (and, on the published weights, that the criterion holds).
    protocol_of, protocol_kind: a control table's protocol name (`<kind>:<name>`) and a protocol's kind.
    null_weights_result, NULL_WEIGHTS_PROTOCOL: the as-published result on a random-weight twin, recorded as the
        null-weights check.
    EffectSpec, Stated, paired_effect, two_sample_effect, interval_effect: a control's effect with its CI,
        stated against the published effect (what decides pass, fail or underpowered).
    Schema, DType: typed [protocol] and [controls.<name>] parameters, checked at collection.
    PromptBank, BankError, load_bank: prompt banks (`[bank]` and `[categories]` tables).
    PromptFormat: raw text or one user turn of the chat template, with or without BOS ([protocol] keys).
Models and sites
    LoadedModel, Dims: a loaded model and the dimensions read from its config.
    resolve_site, parse_site, site_width, map_layer, SiteError, SITE_POINTS: named sites
        (`blocks.{layer}.{point}`) on every supported architecture; published layers mapped by relative depth.
Forward passes, hooks and interventions
    encode, token_counts, Window, forward_capture, Captured: batched forwards keeping windows of sites.
    capture, edit_site, hook_count, Call, CallLog: hooks as context managers that always remove themselves.
    generate, Generation, GenerationRun: batched greedy generation with interventions active.
    generation_paths: which generation path ran a protocol's batches, and why not the graph path.
    sample_conditions, SampledCondition, SampledRun: seeded sampling (one stream per row, so arms are
        seed-matched), with edits while the prompt is read, on the KV cache, and while tokens are sampled.
    KVRows, replace_last: KV-cache surgery (other prompts' keys and values in a prefilled cache; RoPE offsets
        reported).
    zero_attention_output, scale_heads, skip_layer, patch_residual: interventions as context managers.
    attention_entropy, EntropyResult: per-layer, per-head attention entropy inside the forward.
Measurements and statistics
    stats: the statistical tests (student_t, welch_t, mann_whitney, permutation_test, paired_t, ols, ...).
    markers: behaviour scores of generated text (the n300 substring markers as published, word-boundary and
        novel markers, overlap with a source prompt).
    participation_ratio, r_v: PR of a window of activations and the R_V ratio.
    measure_rv, compare_rv, RVRun: R_V per prompt for a claim's early/late layers, and the published comparison.
    TableContext, capture_rows, WindowRows, WindowRule, WINDOW_RULES, layers_from_end: R_V at an early layer and
        a late layer counted from the end, over any window up to the rows captured, under the source's rule
        (last min(W, T) tokens), full windows only, or windows without position 0; one capture per model.
    matched_spans, Matched: token-matched partners (whole-word spans of passages, from a sentence start, with
        exactly a target's token count under the model's tokenizer).
    select_prompts, merge_runs, exclusions: parts and unions of R_V runs, and their exclusion counts.
    measure_entropies, CategoryRun, rfc, rsi, head_level_rfc: attention entropy per prompt category and the
        role-focus coefficients built on it.
    TransferContext, TRANSFER_ARMS, PUBLISHED_ARMS, PERSISTENT_ARMS, draw_pairs, patch_calls: the n300 transfer
        family: prompt pairs, the seed-matched arms (the source's and the ones that take them apart), and the
        persistent patch's hook calls and writes.
"""

from __future__ import annotations

from harness.analysis import markers, stats
from harness.analysis.metrics import participation_ratio, r_v
from harness.analysis.rfc import head_level_rfc, rfc, rsi
from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL, protocol_kind, protocol_of
from harness.claimkit.effects import EffectSpec, Stated, interval_effect, paired_effect, two_sample_effect
from harness.claimkit.gen import path_summary as generation_paths
from harness.claimkit.params import DType, Schema
from harness.claimkit.prompts import BankError, PromptBank, load_bank
from harness.claimkit.registry import Claim, ClaimError, evaluate, load_claim
from harness.claimkit.results import check, null_weights_result, protocol_result
from harness.claimkit.role import CategoryRun
from harness.claimkit.role import measure as measure_entropies
from harness.claimkit.rv import RVRun
from harness.claimkit.rv import compare as compare_rv
from harness.claimkit.rv import measure as measure_rv
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
from harness.engine.attention import EntropyResult, attention_entropy
from harness.engine.formatting import PromptFormat
from harness.engine.generation import Generation, GenerationRun, generate
from harness.engine.hooks import Call, CallLog, capture, edit_site, hook_count
from harness.engine.interventions import patch_residual, scale_heads, skip_layer, zero_attention_output
from harness.engine.kvsurgery import KVRows, replace_last
from harness.engine.models import Dims, LoadedModel
from harness.engine.runner import Captured, Window, encode, forward_capture, token_counts
from harness.engine.sampling import SampledCondition, SampledRun, sample_conditions
from harness.engine.sites import POINTS as SITE_POINTS
from harness.engine.sites import SiteError, map_layer, site_width
from harness.engine.sites import parse as parse_site
from harness.engine.sites import resolve as resolve_site

__all__ = [
    "NULL_WEIGHTS_PROTOCOL", "PERSISTENT_ARMS", "PUBLISHED_ARMS", "SITE_POINTS", "TRANSFER_ARMS", "WINDOW_RULES",
    "BankError", "Call", "CallLog", "Captured", "CategoryRun", "Claim", "ClaimError", "DType", "Dims", "EffectSpec",
    "EntropyResult", "Generation", "GenerationRun", "KVRows", "LoadedModel", "Matched", "PromptBank",
    "PromptFormat", "RVRun", "SampledCondition", "SampledRun", "Schema", "SiteError", "Stated", "TableContext",
    "TransferContext", "Window", "WindowRows", "WindowRule", "attention_entropy", "capture", "capture_rows",
    "check", "compare_rv", "draw_pairs", "edit_site", "encode", "evaluate", "exclusions", "forward_capture",
    "generate", "generation_paths", "head_level_rfc", "hook_count", "interval_effect", "layers_from_end",
    "load_bank", "load_claim", "map_layer", "markers", "matched_spans", "measure_entropies", "measure_rv",
    "merge_runs", "null_weights_result", "paired_effect", "parse_site", "participation_ratio", "patch_calls",
    "patch_residual", "protocol_kind", "protocol_of", "protocol_result", "r_v", "replace_last", "resolve_site",
    "rfc", "rsi", "sample_conditions", "scale_heads", "select_prompts", "site_width", "skip_layer", "stats",
    "token_counts", "two_sample_effect", "zero_attention_output",
]
