"""Print the README's validation table from the matrix test's report.

Usage::

    ONNXCAM_VALIDATION_REPORT=validation.json pytest tests/validation/test_validation_matrix.py
    python benchmarks/validation_table.py validation.json
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    rows = json.load(open(path))
    checks = {(r["model"], r["layer"]): r for r in rows if r.get("float64_check")}
    results = [r for r in rows if not r.get("float64_check")]
    print("| model | layer | stage | maps | max rel L2 | median rel L2 | maps <= 1e-3 | "
          "median rel L2 to float64 autograd (ours / PyTorch fp32) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        check = checks.get((r["model"], r["layer"])) if r["stage"] == "earlier" else None
        note = (f"{check['onnxcam_vs_float64']:.1e} / {check['torch32_vs_float64']:.1e}"
                if check else "")
        print(f"| {r['model']} | `{r['layer']}` | {r['stage']} | {r['maps']} | "
              f"{r['max_rel_l2']:.1e} | {r['median_rel_l2']:.1e} | "
              f"{r['frac_le_1e-3']:.0%} | {note} |")
    last = [r for r in results if r["stage"] == "last"]
    early = [r for r in results if r["stage"] == "earlier"]
    within = sum(r["frac_le_1e-3"] * r["maps"] for r in early)
    total = sum(r["maps"] for r in early)
    print()
    print(f"Last stage: worst {max(r['max_rel_l2'] for r in last):.1e} over "
          f"{sum(r['maps'] for r in last)} maps. Earlier stages: {within:.0f}/{total} maps "
          f"({within / total:.1%}) within 1e-3, worst {max(r['max_rel_l2'] for r in early):.1e}.")


if __name__ == "__main__":
    main(sys.argv[1])
