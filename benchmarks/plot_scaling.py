"""Draw `benchmarks.scaling`'s JSON as a figure: seconds against n with each fitted line, and peak memory.

    python -m benchmarks.plot_scaling results/scaling.json docs/cost-vs-n.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {"rv_contraction": "rv_contraction (n recursive + n baseline)", "rfc": "RFC entropies (n prompts)",
          "patch_grid": "residual-patch grid (n pairs x 3 layers + n unpatched)"}


def draw(found: dict[str, Any], path: Path) -> None:
    fig, (cost, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, workload in found["workloads"].items():
        n = [p["n"] for p in workload["points"]]
        line = workload["fit"]
        shown = cost.plot(n, [p["seconds"] for p in workload["points"]], "o", label=LABELS.get(name, name))[0]
        cost.plot(n, [line["intercept_s"] + line["slope_s_per_prompt"] * x for x in n], "-",
                  color=shown.get_color(), alpha=0.6,
                  label=f"  fit {line['slope_s_per_prompt'] * 1e3:.1f} ms/prompt + {line['intercept_s']:.2f} s")
        memory.plot(n, [p["peak_extra_bytes"] / 1e9 for p in workload["points"]], "o-", color=shown.get_color(),
                    label=name)
    cost.set(xlabel="prompts per condition (n)", ylabel="wall time (s)", xscale="log", yscale="log",
             title="cost against n")
    memory.set(xlabel="prompts per condition (n)", ylabel="peak device memory above the weights (GB)", xscale="log",
               title=f"memory against n (forward batch {found['batch_size']}, generate batch 1024 rows)")
    cost.legend(fontsize=7)
    memory.legend(fontsize=7)
    fig.suptitle(f"{found['model']} ({found['weights']} weights, {found['dtype']}), {found['device']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("png")
    args = parser.parse_args()
    draw(json.loads(Path(args.json).read_text(encoding="utf-8")), Path(args.png))


if __name__ == "__main__":
    main()
