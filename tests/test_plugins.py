"""Plugins: a separately installed package registers an image encoder that a model uses;
a broken plugin is a warning, not a failure."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "examples", "lavislike_example_plugin")


def run_py(code, site):
    env = dict(os.environ, PYTHONPATH=site)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_installed_plugin_encoder_used_by_a_model(tmp_path):
    site = str(tmp_path / "site")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, PLUGIN],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    out = run_py(
        """
        import torch
        from lavislike.registry import IMAGE_ENCODERS
        from lavislike.models import load_model_and_preprocess
        assert "conv_patch_encoder" in IMAGE_ENCODERS.names()
        model, vis, txt = load_model_and_preprocess(
            "blip2", "tiny", load_pretrained=False,
            image_encoder={"name": "conv_patch_encoder", "width": 24, "patch_size": 8, "image_size": 32},
        )
        assert type(model.image_encoder).__name__ == "ConvPatchEncoder", type(model.image_encoder)
        images = torch.randn(2, 3, 32, 32)
        out = model({"image": images, "text_input": ["a red circle", "a blue square"]})
        assert torch.isfinite(out["loss"]), out
        print("OK", model.image_encoder.num_features)
        """,
        site,
    )
    assert out.returncode == 0, out.stderr
    assert "OK 24" in out.stdout


def test_broken_plugin_warns_and_the_rest_works(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lavislike.plugins]\nbroken = broken_plugin_mod\n")
    (site / "broken_plugin_mod.py").write_text("raise RuntimeError('this plugin is broken')\n")
    out = run_py(
        """
        import warnings
        warnings.simplefilter("always")
        from lavislike.registry import MODELS
        print("models:", len(MODELS.names()))
        """,
        str(site),
    )
    assert out.returncode == 0, out.stderr
    assert "broken_plugin_mod" in out.stderr and "this plugin is broken" in out.stderr
    assert "models:" in out.stdout
