"""All side-by-side benchmarks in one run, printed as one table.

Run: ``.venv/bin/python bench/run_all.py [--size small|base] [--threads N] [--clock wall|cpu]``

Each benchmark checks parity with transformers first and stops the run if it fails.
"""
from __future__ import annotations

import time

import common
import generate
import retrieval
import stage1_step
import stage2_step

BENCHMARKS = (stage1_step, stage2_step, generate, retrieval)


def main() -> None:
    args = common.parse_args(description=__doc__)
    start = time.perf_counter()
    rows = []
    for bench in BENCHMARKS:
        rows.extend(bench.run(args))
    print()
    print(common.format_table(rows))
    print()
    print(issue_table(rows, common.matmul_peak_gflops()))
    print(f"(size={args.size}, threads={common.torch.get_num_threads()}, clock={args.clock}, "
          f"total {time.perf_counter() - start:.0f} s)")


def issue_table(rows: list, peak: float) -> str:
    """Issue 13's view: ours / reference per row against its goal, and the share of the
    machine's fp32 matmul peak the stage-1 step reaches (and the reference's work)."""
    lines = [f"{'row (issue 13)':<40} {'ours/ref':>8} {'goal':>6}  met", "-" * 62]
    for r in rows:
        if r.ratio is None:
            continue
        share = 1 / r.ratio
        met = "-" if r.goal is None else ("yes" if share <= r.goal else "NO")
        lines.append(f"{r.metric:<40} {share:8.2f} {'<=' + format(r.goal, '.2f') if r.goal else '':>6}  {met}")
    lines.append(f"fp32 matmul peak of this machine: {peak:.0f} GFLOP/s ({common.torch.get_num_threads()} threads)")
    for r in rows:
        if r.gflops and r.ours_ms:
            rate = r.gflops / (r.ours_ms / 1000)
            lines.append(f"{r.metric}: {r.gflops:.1f} GFLOP in {r.ours_ms:.0f} ms = {rate:.0f} GFLOP/s, "
                         f"{100 * rate / peak:.0f}% of peak")
            if r.ref_gflops and r.ref_ms:
                ref_rate = r.ref_gflops / (r.ref_ms / 1000)
                lines.append(f"  reference: {r.ref_gflops:.1f} GFLOP in {r.ref_ms:.0f} ms = {ref_rate:.0f} GFLOP/s; "
                             f"ours/ref work {r.gflops / r.ref_gflops:.2f}, time {r.ours_ms / r.ref_ms:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
