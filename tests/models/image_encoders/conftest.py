"""Fixtures for the image-encoder tests."""
import pytest
import torch


def randomize_(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter clearly non-trivial values.

    Blip2VisionConfig initialises with std 1e-10, which would make any two
    architectures agree; norms get weights near 1 so activations stay finite.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, std)
    return model


@pytest.fixture(scope="session")
def randomize():
    """The :func:`randomize_` helper as a fixture (tests here are not a package)."""
    return randomize_
