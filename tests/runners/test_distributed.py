import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from lavislike.common import dist as D
from script_env import env_without_torchrun, torchrun_command

SCRIPT = Path(__file__).parent / "ddp_script.py"


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, monkeypatch, fresh_log_handlers):
    with open(tmp_path / "two.log", "w") as log:
        two = subprocess.Popen(torchrun_command(SCRIPT, str(tmp_path / "two"), "2"), env=env_without_torchrun(),
                               stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        # the one-process run is the same script, in this process while the two ranks start
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(tmp_path / "one"), "4"])
        runpy.run_path(str(SCRIPT), run_name="__main__")
        assert two.wait(timeout=120) == 0, (tmp_path / "two.log").read_text()[-3000:]
    finally:
        if two.poll() is None:  # the launcher and the ranks it started
            os.killpg(two.pid, signal.SIGKILL)
            two.wait()
    w1, w2 = load_file(str(tmp_path / "one" / "final.safetensors")), load_file(str(tmp_path / "two" / "final.safetensors"))
    assert set(w1) == set(w2)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-6)
    assert not torch.equal(w1["head.weight"], torch.zeros_like(w1["head.weight"]))
    assert "world size 2" in (tmp_path / "two.log").read_text()


def test_dist_helpers_are_safe_in_one_process():
    assert D.init_distributed_mode() is False
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    assert D.all_gather_object(5) == [5]
    m = torch.nn.Linear(2, 2)
    assert D.unwrap_model(m) is m


def test_ranks_batches_concatenate_to_the_single_process_batches():
    """Global batch g of W ranks x b is one process's batch g of W*b, in the same order
    (the ITM negatives are drawn in batch order); every rank gets as many samples."""
    from lavislike.runners.data import ShardedSampler

    for size in (7, 21, 24, 50):
        one = ShardedSampler(size, shuffle=True, seed=3, batch_size=8)._indices()
        ranks = [ShardedSampler(size, shuffle=True, seed=3, rank=r, world_size=2, batch_size=4)._indices()
                 for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) == -(-size // 2)
        assert set(ranks[0]) | set(ranks[1]) == set(range(size))
        for g in range(size // 8):
            assert one[8 * g : 8 * g + 8] == ranks[0][4 * g : 4 * g + 4] + ranks[1][4 * g : 4 * g + 4]


def test_evaluation_shards_are_whole_one_process_batches():
    """Evaluation deals one process's batches of b (the partial last one too) round robin:
    every sample once, and each rank's batches of b are batches one process makes."""
    from lavislike.runners.data import ShardedSampler

    def shards(size, world, b):
        return [ShardedSampler(size, shuffle=False, seed=0, rank=r, world_size=world, pad=False,
                               batch_size=b)._indices() for r in range(world)]

    assert shards(5, 2, 2) == [[0, 1, 4], [2, 3]]
    assert shards(7, 2, 2) == [[0, 1, 4, 5], [2, 3, 6]]
    assert shards(3, 2, 4) == [[0, 1, 2], []]
    assert shards(5, 3, 1) == [[0, 3], [1, 4], [2]]


def test_gather_full_keeps_the_whole_state_only_where_asked():
    """Ranks that do not write the gathered weights take part and keep nothing (a whole
    model once per rank in host memory is what a frozen 7B LLM cannot afford)."""
    from lavislike.runners.distributed import gather_full

    state = {"a": torch.arange(6.0).view(2, 3).requires_grad_(), "b": torch.ones(2)}
    kept = gather_full(state)
    assert set(kept) == {"a", "b"} and not kept["a"].requires_grad
    torch.testing.assert_close(kept["a"], torch.arange(6.0).view(2, 3))
    assert gather_full(state, keep=False) == {}
