"""Near-match suggestions for error messages."""
import difflib
from typing import Iterable, Sequence


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name``, or None when nothing is close."""
    found = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean 'x'?' or an empty string."""
    best = closest(name, candidates)
    return f" Did you mean '{best}'?" if best else ""


def check_choice(value: str, valid: Sequence[str], key: str, shown: str | None = None) -> None:
    """Raise ``ConfigError`` "KEY: 'SHOWN' is not valid. Did you mean ...? Valid: ..." unless
    ``value`` is one of ``valid`` (``shown``: the value as the user wrote it)."""
    if value in valid:
        return
    from lavislike.errors import ConfigError

    raise ConfigError(f"{key}: '{value if shown is None else shown}' is not valid.{did_you_mean(value, valid)} "
                      f"Valid: {', '.join(valid)}")
