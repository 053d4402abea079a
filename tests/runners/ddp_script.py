"""Launched by test_distributed.py (torchrun or plain python): train the toy model, save weights."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from toy_parts import ToyModel, make_runner  # noqa: E402

from lavislike.common import dist as D  # noqa: E402
from lavislike.common.checkpoint import save_weights  # noqa: E402

out, per_rank_batch = Path(sys.argv[1]), int(sys.argv[2])
import torch  # noqa: E402

torch.manual_seed(0)
runner = make_runner(out, model=ToyModel(), batch_size_train=per_rank_batch, max_epoch=1, distributed=True)
runner.train()
if D.is_main_process():
    save_weights(out / "final.safetensors", runner.unwrapped_model.state_dict(), {"world": D.get_world_size()})
D.barrier()
