"""pip install for the Python side of lisa_ros: the `lisa_model` library, the `lisa_ros` node code and `training`.

Versions come from requirements/python.txt (requirements/ is the one place where dependencies are pinned).
`lisa_model` needs only the model stack; ROS comes from a ROS install or requirements/ros-wheels.txt.
"""
from pathlib import Path

from setuptools import find_packages, setup

_MODEL_STACK = {
    "torch", "torchvision", "transformers", "tokenizers", "sentencepiece", "safetensors",
    "segment-anything", "numpy", "pillow", "opencv-python-headless", "huggingface-hub",
}
_TRAINING_STACK = {"peft", "accelerate", "tqdm", "tensorboard", "matplotlib", "pycocotools"}


def _pinned(names: set) -> list:
    lines = (Path(__file__).parent / "requirements" / "python.txt").read_text().splitlines()
    reqs = [ln.split("#")[0].strip() for ln in lines]
    return [r for r in reqs if r and r.split("==")[0].split("[")[0].lower() in names]


setup(
    name="lisa_ros",
    version="0.1.0",
    description="LISA reasoning segmentation as a library (lisa_model) and a ROS 2 node (lisa_ros)",
    packages=find_packages(include=["lisa_model", "lisa_model.*", "lisa_ros", "lisa_ros.*",
                                    "training", "training.*"]),
    package_data={"lisa_model": ["weights/*/*"]},  # built-in checkpoints (lisa-demo)
    python_requires=">=3.10",
    install_requires=_pinned(_MODEL_STACK),
    extras_require={"training": _pinned(_TRAINING_STACK)},
    entry_points={
        "console_scripts": [
            "lisa-segment = lisa_model.cli:main",
            "lisa-eval = training.evaluate:main",
            "lisa-train = training.train:main",
            "lisa-export = training.export:main",
        ]
    },
)
