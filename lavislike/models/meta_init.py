"""Building a model without allocating or initialising its parameters.

A model whose weights come from a checkpoint is built with its parameters on the
``meta`` device and then filled with ``load_state_dict(assign=True)``
(:mod:`lavislike.models.loading`). Buffers stay real: they are often computed in
``__init__`` (key-bias zeros, position ids, rotary tables), are not saved in checkpoints
and must keep their values, which a plain ``with torch.device("meta"):`` build would lose.

Nothing of torch is patched: the build uses torch's public parameter-registration hook,
registered for the build only and acting only in the context that asked for it (other
threads building modules meanwhile are untouched).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

__all__ = ["params_on_meta", "real_parameters"]

_ON_META: contextvars.ContextVar[bool] = contextvars.ContextVar("lavislike_params_on_meta", default=False)


def _to_meta(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> Optional[nn.Parameter]:
    if param is None or param.is_meta or not _ON_META.get():
        return None  # keep the parameter as given
    return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


@contextlib.contextmanager
def _parameters_on_meta(value: bool) -> Iterator[None]:
    token = _ON_META.set(value)
    handle = register_module_parameter_registration_hook(_to_meta) if value else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        _ON_META.reset(token)


def params_on_meta():
    """Parameters created inside are on ``meta`` (no memory, no init cost); buffers stay real."""
    return _parameters_on_meta(True)


def real_parameters():
    """Real parameters again inside :func:`params_on_meta`: a frozen LLM whose weights are
    read from ``llm.path`` (not from the BLIP-2 checkpoint) is loaded for real."""
    return _parameters_on_meta(False)
