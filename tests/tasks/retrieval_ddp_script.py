"""Launched by test_retrieval_lavis.py (plain python or torchrun on gloo): retrieval scores
of a tiny BLIP-2 over a rank-sharded loader, plus what crossed between ranks."""
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from lavislike.common import dist as D
from lavislike.runners.data import ShardedSampler
from lavislike.models import from_hf
from lavislike.tasks.retrieval import RetrievalTaskConfig, retrieval_scores


class Pixels(Dataset):
    def __init__(self, pixels, text):
        self.pixels, self.text = pixels, text

    def __len__(self):
        return self.pixels.shape[0]

    def __getitem__(self, i):
        return {"image": self.pixels[i], "index": i}


def tensor_shapes(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [list(obj.shape)]
    if isinstance(obj, (list, tuple)):
        return [s for o in obj for s in tensor_shapes(o)]
    if isinstance(obj, dict):
        return [s for o in obj.values() for s in tensor_shapes(o)]
    return []


folder, out = Path(sys.argv[1]), Path(sys.argv[2])
D.init_distributed_mode(backend="gloo")
model = from_hf(folder / "hf")
data = torch.load(folder / "data.pt", weights_only=True)
ds = Pixels(data["pixels"], data["texts"])
sampler = ShardedSampler(len(ds), shuffle=False, seed=0, rank=D.get_rank(), world_size=D.get_world_size(), pad=False)
loader = DataLoader(ds, batch_size=2, sampler=sampler)

gathered, scored = [], []
plain_gather, plain_itm = D.all_gather_object, model.itm_scores


def spy_gather(obj):
    gathered.extend(tensor_shapes(obj))
    return plain_gather(obj)


def spy_itm(image_embeds, input_ids, *args, **kw):
    scored.append(input_ids.shape[0])
    return plain_itm(image_embeds, input_ids, *args, **kw)


D.all_gather_object, model.itm_scores = spy_gather, spy_itm
i2t, t2i = retrieval_scores(model, loader, RetrievalTaskConfig(k_test=4, itm_batch_size=8))
out.mkdir(parents=True, exist_ok=True)
torch.save({"i2t": i2t, "t2i": t2i, "gathered": gathered, "pairs": sum(scored)}, out / f"rank{D.get_rank()}.pt")
D.barrier()
