"""Near-match suggestions for error messages."""
import difflib
from typing import Iterable


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name``, or None when nothing is close."""
    found = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean 'x'?' or an empty string."""
    best = closest(name, candidates)
    return f" Did you mean '{best}'?" if best else ""
