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
    print(f"(size={args.size}, threads={common.torch.get_num_threads()}, clock={args.clock}, "
          f"total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
