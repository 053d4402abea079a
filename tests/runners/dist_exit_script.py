"""One rank that ends as an evaluation does: join the gloo group, broadcast the metrics from
rank 0 (``broadcast_object``), keep the group referenced (as a DDP / FSDP module does until
teardown) and return."""
import torch.distributed as dist

from lavislike.common import dist as D

if __name__ == "__main__":
    assert D.init_distributed_mode(backend="gloo")
    held = dist.group.WORLD  # noqa: F841 - alive until teardown, as a wrapped model keeps it
    metrics = D.broadcast_object({"agg_metrics": 1.0} if D.is_main_process() else None)
    assert metrics == {"agg_metrics": 1.0}
