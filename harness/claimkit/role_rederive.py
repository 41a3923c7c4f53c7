"""The role-conditioning headlines re-derived from the sources' published tables (claims-spec B.3), no model.

`rederive(claim, folder)` replays [published].data_file, the table the verdict rests on (for Qwen the table
committed last). A claim may name a `superseded_data_file` (Qwen's 2025-10-19 table, behind the README's
headline): `rederive(..., table="superseded_data_file")` replays it as a `robustness` result, reported beside
and never deciding the verdict. `cross_model(claim, folder)` correlates the claim's per-layer dRFC with another
family's table ([protocol.correlate_with]): Pearson and Spearman with the source's iid p, and beside them the
circular-shift and block-permutation p that respect the autocorrelation of neighbouring layers (W-B6).
Every table is read through `published.verified_table`: a missing or altered table is an error, never a skip.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.analysis.profiles import correlate_profiles
from harness.analysis.rfc import UnstableRule, compare_layers
from harness.claimkit.published import verified_table
from harness.claimkit.registry import Claim
from harness.claimkit.replay import RfcReplay, read_table, replay_rfc
from harness.claimkit.results import protocol_result
from harness.claimkit.role import layer_profile

# [published] key -> (protocol, kind, label of its mean in the other table's result)
TABLES = {"data_file": ("rederive", "rederive", "committed_table"),
          "superseded_data_file": ("robustness:rederive_superseded", "robustness", "superseded_table")}


def _replay(claim: Claim, folder: Path, name: str) -> RfcReplay:
    rule = UnstableRule(**claim.protocol.get("unstable_rule", {}))
    return replay_rfc(verified_table(folder, name), rule=rule, threshold=claim.protocol["threshold"])


def _figures(claim: Claim, replay: RfcReplay) -> dict[str, Any]:
    r, t = replay.rfc, replay.rfc.thresholds
    return {"mean_drfc": r.mean, "median_drfc": r.median, "n_layers": replay.n_layers, "layers_below": t.below,
            "layers_above": t.above, "layers_near_zero": t.near_zero, "n_significant_rfc": r.significant,
            "n_significant_rsi": replay.rsi.significant, "mean_drsi": replay.rsi.mean,
            "n_bonferroni_rfc": len(r.bonferroni_layers), "mean_drfc_without_unstable": r.mean_without_unstable,
            "heads_counted": replay.n_heads["instruct"],
            "mean_drfc_abs_error": abs(r.mean - claim.published["mean_drfc"])}


def rederive(claim: Claim, folder: Path, table: str = "data_file") -> dict[str, Any]:
    """The headline re-derived from the table named by [published].<table> (see TABLES for the protocol)."""
    if table not in TABLES or table not in claim.published:
        raise ValueError(f"{claim.path}: [published].{table} is not set (tables: {sorted(TABLES)}); name the "
                         "published table file there")
    protocol, kind, _ = TABLES[table]
    name = str(claim.published[table])
    replay = _replay(claim, folder, name)
    observed = _figures(claim, replay)
    others = {TABLES[k][2]: str(claim.published[k]) for k in TABLES if k != table and k in claim.published}
    for label, other in others.items():
        observed[f"mean_drfc_{label}"] = _replay(claim, folder, other).rfc.mean
    data = read_table(verified_table(folder, name))
    stats = {m: data.stats("rfc", m) for m in ("base", "instruct")}
    profile = layer_profile("RFC", range(data.n_layers), stats["base"], stats["instruct"],
                            compare_layers(stats["base"], stats["instruct"]))
    published = {k: v for k, v in claim.published.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return protocol_result(claim, protocol, kind, claim.criteria["rederive"], observed, published=published,
                           n={"layers": replay.n_layers}, data={"rfc_by_layer": profile},
                           notes=_notes(name, kind, others, observed, replay))


def _notes(name: str, kind: str, others: Mapping[str, str], observed: Mapping[str, Any], replay: RfcReplay
           ) -> tuple[str, ...]:
    notes = [f"re-derived from {name} (`python -m harness replay rfc`); the per-layer CIs are the table's "
             "head-level ones"]
    if kind == "robustness":
        notes.append("a superseded table: reported beside the verdict, which rests on [published].data_file")
    notes += [f"the {label.replace('_', ' ')} ({other}) gives mean dRFC {observed[f'mean_drfc_{label}']:+.4f}"
              for label, other in others.items()]
    if replay.unstable_layers:
        notes.append(f"unstable RFC denominators at layers {[u.layer for u in replay.unstable_layers]}: "
                     f"without them the mean dRFC is {replay.rfc.mean_without_unstable:+.4f}")
    return tuple(notes)


def cross_model(claim: Claim, folder: Path) -> dict[str, Any]:
    """The claim's per-layer dRFC correlated with [protocol.correlate_with].data_file's (robustness)."""
    spec = claim.protocol.get("correlate_with")
    if spec is None:
        raise ValueError(f"{claim.path}: [protocol.correlate_with] is not set; name data_file, label, "
                         "block_length, n_permutations and seed there")
    mine = read_table(verified_table(folder, str(claim.published["data_file"])))
    other = read_table(verified_table(folder, str(spec["data_file"])))
    corr = correlate_profiles(mine.columns["rfc_diff"], other.columns["rfc_diff"], int(spec["block_length"]),
                              int(spec["n_permutations"]), int(spec["seed"]))
    label = str(spec["label"])
    observed = {"pearson_r": corr.pearson_r, "pearson_p_iid": corr.pearson_p, "spearman_rho": corr.spearman_rho,
                "spearman_p_iid": corr.spearman_p, "pearson_p_circular_shift": corr.shift_p,
                "pearson_p_block_permutation": corr.block_p, "n_layers": corr.n_layers,
                "pearson_r_abs_error": abs(corr.pearson_r - claim.published[f"pearson_r_{label}"]),
                "pearson_p_iid_abs_error": abs(corr.pearson_p - claim.published[f"pearson_p_{label}"])}
    published = {k: v for k, v in claim.published.items() if k.endswith(label) and isinstance(v, int | float)}
    notes = (f"per-layer dRFC of {claim.published['data_file']} against {spec['data_file']}",
             "the source's p treats the layers as independent; neighbouring layers are alike (W-B6), so the "
             f"circular-shift p ({corr.shift_p:.3g}, all {corr.n_layers} rotations) and the "
             f"{corr.block_length}-layer block-permutation p ({corr.block_p:.3g}, {corr.n_permutations} draws, "
             f"seed {spec['seed']}) are the ones to read",
             "robustness: reported beside the re-derivation, never counted")
    tests = {"pearson": "scipy.stats.pearsonr", "spearman": "scipy.stats.spearmanr",
             "circular_shift": {"arrangements": corr.n_layers},
             "block_permutation": {"block_length": corr.block_length, "n_permutations": corr.n_permutations,
                                   "seed": int(spec["seed"])}}
    return protocol_result(claim, f"robustness:correlation_{label}", "robustness", claim.criteria["cross_model"],
                           observed, published=published, n={"layers": corr.n_layers}, tests=tests, notes=notes)
