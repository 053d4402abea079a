"""What is registered: the table behind ``lavislike zoo`` and ``model_zoo``."""
from __future__ import annotations

from lavislike.common.suggest import did_you_mean
from lavislike.errors import RegistryError
from lavislike.registry import ALL, MODELS


def _model_rows() -> list[tuple[str, str]]:
    rows = []
    for arch in MODELS.names():
        cls = MODELS.get(arch)
        types = list(getattr(cls, "MODEL_TYPES", {}))
        default = getattr(cls, "DEFAULT_MODEL_TYPE", None)
        shown = [f"{t} (default)" if t == default else t for t in types]
        rows.append((arch, ", ".join(shown) or "-"))
    return rows


def zoo_text(kind: str | None = None) -> str:
    """A plain-text table of registered components (all kinds, or one)."""
    if kind is not None and kind not in ALL:
        raise RegistryError(
            f"unknown registry '{kind}'.{did_you_mean(kind, ALL)} Known: {', '.join(ALL)}"
        )
    out = []
    for name, registry in ALL.items():
        if kind is not None and name != kind:
            continue
        out.append(f"{name} ({len(registry)})")
        if registry is MODELS:
            rows = _model_rows()
            width = max((len(a) for a, _ in rows), default=0)
            out += [f"  {a.ljust(width)}  types: {t}" for a, t in rows]
        else:
            out += [f"  {n}" for n in registry.names()]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
