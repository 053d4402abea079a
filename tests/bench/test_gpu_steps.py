"""``bench/gpu_steps.py`` (what ``bench/gpu.sh`` runs on a lent GPU) on the CPU at the tiny
size: it runs end to end, prints a line per implementation, and the sides of each comparison
give the same loss under bf16 autocast with dropout off (ours against transformers' modules
and against the LAVIS stage-1 reference), so GPU time is not spent on a script that crashes
or compares different computations."""
import re
import subprocess
import sys

import pytest

from script_env import REPO, script_env
LINE = re.compile(r"^stage (\d) (.+?)\s+batch\s+(\d+)\s+([\d.]+) samples/s .*dropout off: ([\d.]+)\)$")


def run_steps(stage: int) -> dict[str, float]:
    res = subprocess.run([sys.executable, "bench/gpu_steps.py", "--stage", str(stage), "--device", "cpu",
                          "--size", "tiny", "--steps", "1", "--warmup", "0"],
                         capture_output=True, text=True, cwd=REPO, env=script_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {}
    for line in res.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            assert int(m.group(1)) == stage and int(m.group(3)) == 4 and float(m.group(4)) > 0, line
            rows[m.group(2)] = float(m.group(5))
    return rows


@pytest.mark.parametrize("stage, pairs", [
    (1, [("lavislike ITC+ITM", "transformers ITC+ITM"), ("lavislike full ITC+ITM+ITG", "LAVIS full ITC+ITM+ITG")]),
    (2, [("lavislike LM loss", "transformers LM loss")]),
])
def test_gpu_steps_run_on_cpu(stage, pairs):
    rows = run_steps(stage)
    assert sorted(rows) == sorted(n for pair in pairs for n in pair), rows
    for ours, ref in pairs:
        # bf16 autocast on both sides: equal to its precision (fp32 parity: stage*_step.py)
        assert rows[ours] == pytest.approx(rows[ref], rel=1e-2), (ours, ref, rows)
