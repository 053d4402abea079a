"""The synthetic corpus: generator (``make_synthetic``) and its registered builders."""
from lavislike.datasets.synthetic import builders  # noqa: F401  (register)
from lavislike.datasets.synthetic.generate import SyntheticParams, make_synthetic, read_manifest

__all__ = ["SyntheticParams", "make_synthetic", "read_manifest"]
