"""Key-map tables between checkpoint layouts, and strict key checking with allow-lists.

A :class:`KeyMap` is an ordered table of ``(source prefix, target prefix)`` templates in
which ``{n}`` stands for a layer number. A key is renamed by the first template whose
source prefix it starts with; the same table read backwards exports. Tables compose with
``+``, so the stage-2 models extend the stage-1 tables with their LLM and projection rows.

Example:
    >>> km = KeyMap([("Qformer.bert.encoder.layer.{n}.intermediate.dense.",
    ...               "qformer.layers.{n}.text_ffn.fc1.")])
    >>> km.rename("Qformer.bert.encoder.layer.3.intermediate.dense.weight")
    'qformer.layers.3.text_ffn.fc1.weight'
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from lavislike.errors import CheckpointError

_SHOW = 8  # names listed in an error before "... and N more"


@functools.lru_cache(maxsize=None)
def _compile(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)"))


@dataclass(frozen=True)
class KeyMap:
    """An ordered prefix table (see the module docstring)."""

    rules: tuple[tuple[str, str], ...]

    def __init__(self, rules: Iterable[tuple[str, str]]):
        object.__setattr__(self, "rules", tuple(rules))

    def __add__(self, other: "KeyMap") -> "KeyMap":
        return KeyMap(self.rules + other.rules)

    def inverse(self) -> "KeyMap":
        return KeyMap((dst, src) for src, dst in self.rules)

    def rename(self, key: str) -> Optional[str]:
        """The renamed key, or None when no template matches."""
        for src, dst in self.rules:
            m = _compile(src).match(key)
            if m:
                prefix = dst.replace("{n}", m.group("n")) if "n" in m.groupdict() else dst
                return prefix + key[m.end():]
        return None

    def convert(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """``(renamed state, keys no template matched)``."""
        out, unmatched = {}, []
        for key, value in state.items():
            new = self.rename(key)
            if new is None:
                unmatched.append(key)
            else:
                out[new] = value
        return out, unmatched


def matches_any(key: str, patterns: Sequence[str]) -> bool:
    """Whether ``key`` fully matches one of the regular expressions in ``patterns``."""
    return any(re.fullmatch(p, key) for p in patterns)


def _names(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def check_keys(
    source: str,
    expected: Iterable[str],
    state: Mapping[str, torch.Tensor],
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Compare a converted state dict with the model's keys against explicit allow-lists.

    Args:
        source: the checkpoint, named in errors.
        expected: the model's state-dict keys.
        state: the converted checkpoint.
        allow_missing: regexes of model keys the checkpoint may lack.
        allow_unexpected: regexes of checkpoint keys that are ignored.

    Returns:
        ``(missing, unexpected)`` keys that the allow-lists let through.

    Raises:
        CheckpointError: naming the keys outside the allow-lists.
    """
    expected = set(expected)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    bad_missing = [k for k in missing if not matches_any(k, allow_missing)]
    bad_unexpected = [k for k in unexpected if not matches_any(k, allow_unexpected)]
    problems = []
    if bad_missing:
        problems.append(f"missing keys: {_names(bad_missing)}")
    if bad_unexpected:
        problems.append(f"unexpected keys: {_names(bad_unexpected)}")
    if problems:
        raise CheckpointError(f"{source}: {'; '.join(problems)}")
    return missing, unexpected


# config keys that size the parts a shape mismatch most often comes from
_SHAPE_HINTS: tuple[tuple[str, str], ...] = (
    ("llm_proj.", "the LLM's width (model.llm) or the Q-Former's (model.qformer.hidden_size)"),
    ("llm.", "model.llm (its config.json or hf_config)"),
    ("image_encoder.", "model.image_encoder"),
    ("qformer.", "model.qformer"),
)


def check_shapes(source: str, expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """Raise naming the first tensor of ``state`` whose shape is not the model's (instead of
    torch's "size mismatch" list)."""
    for key, value in state.items():
        target = expected.get(key)
        if target is not None and tuple(target.shape) != tuple(value.shape):
            hint = next((h for p, h in _SHAPE_HINTS if key.startswith(p)), "the model config")
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model built from the config has "
                f"{tuple(target.shape)}; check {hint}"
            )


def split_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[dict, dict]:
    """``(keys under prefix with it stripped, the other keys)``."""
    inside, rest = {}, {}
    for k, v in state.items():
        if k.startswith(prefix):
            inside[k[len(prefix):]] = v
        else:
            rest[k] = v
    return inside, rest


def check_unmatched(source: str, unmatched: Sequence[str], allow: Sequence[str]) -> None:
    """Raise for checkpoint keys no table row renamed and no allow-list pattern covers."""
    bad = [k for k in unmatched if not matches_any(k, allow)]
    if bad:
        raise CheckpointError(f"{source}: keys with no mapping (unexpected): {_names(bad)}")


def convert_model_state(
    rest: Mapping[str, torch.Tensor],
    table: KeyMap,
    drop: Sequence[str],
    source: str,
    encoder_state: Mapping[str, torch.Tensor],
    convert_encoder: Callable[[dict], Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """A checkpoint's keys -> our model's: ``rest`` by ``table``, the image encoder's part
    (``encoder_state``, prefix stripped) by the encoder's own converter.

    Raises:
        CheckpointError: a key of ``rest`` no row maps and ``drop`` does not cover.
    """
    out, unmatched = table.convert(rest)
    check_unmatched(source, unmatched, drop)
    if encoder_state:
        converted = convert_encoder(dict(encoder_state))
        out.update({f"image_encoder.{k}": v for k, v in converted.items()})
    return out


def export_model_state(
    model: nn.Module, table: KeyMap, encoder_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Our weights renamed by ``table`` read backwards (rows it lacks are left out), the
    image encoder's replaced by ``encoder_state`` (already in the target layout)."""
    inverse = table.inverse()
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("image_encoder."):
            continue
        new = inverse.rename(key)
        if new is not None:
            out[new] = value.detach()
    out.update(encoder_state)
    return out
