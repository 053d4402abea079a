"""Iteration-based runner: a fixed number of optimizer steps over (possibly streamed) data.

Validation and checkpoints happen every ``iters_per_inner_epoch`` steps; the data
iterator runs on across those boundaries and across passes over the data (with several
corpora, each starts its next pass when it runs out).
"""

from dataclasses import dataclass

from lavislike.errors import ConfigError
from lavislike.registry import RUNNERS
from lavislike.runners.data import MixedTrainStream, TrainStream
from lavislike.runners.runner_base import RunnerBase, RunnerConfig


@dataclass
class IterRunnerConfig(RunnerConfig):
    """Keys of ``run`` read by ``runner_iter``: those of ``runner_base``, where
    ``max_iters`` and ``iters_per_inner_epoch`` (from :class:`RunConfig`) now matter."""

    runner: str = "runner_iter"


@RUNNERS.register("runner_iter", config=IterRunnerConfig)
class RunnerIter(RunnerBase):
    """Runs ``max_iters`` optimizer steps in inner epochs of ``iters_per_inner_epoch``."""

    config_class = IterRunnerConfig
    period_name = "inner epoch"

    def plan(self, stream: TrainStream | MixedTrainStream) -> tuple[int, int]:
        total = self.run.max_iters
        if not total or total <= 0:
            raise ConfigError(f"run.max_iters must be a positive integer for runner_iter, got {total}")
        per = self.run.iters_per_inner_epoch or total
        if per <= 0:
            raise ConfigError(f"run.iters_per_inner_epoch must be positive, got {per}")
        return min(per, total), total

    def end_period(self, stream: TrainStream | MixedTrainStream) -> None:
        """Inner epochs do not follow the data: keep reading where the stream is."""
