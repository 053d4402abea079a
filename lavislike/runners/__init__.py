"""Runners (training loops), lr schedules and optimizers; importing registers them."""
from lavislike.runners import lr_schedulers  # noqa: F401  (registers LR_SCHEDULERS)
from lavislike.runners.runner_base import NonFiniteLossError, RunnerBase, RunnerConfig
from lavislike.runners.runner_iter import IterRunnerConfig, RunnerIter

__all__ = ["RunnerBase", "RunnerIter", "RunnerConfig", "IterRunnerConfig", "NonFiniteLossError"]
