"""Packaging for leap_fairseq.

fairseq is a dependency with a twist: a user who already has a fairseq
installed (upstream fairseq built from source, say) keeps it, and a user
without one gets the ``ve-fairseq`` wheel, which provides the module
``fairseq`` and imports on Python 3.11. pip builds this package in an isolated
environment that cannot see the target environment's packages, so the check
runs in a subprocess of the target interpreter with pip's isolation removed.
"""

import os
import subprocess
import sys

from setuptools import find_packages, setup

VE_FAIRSEQ = "ve-fairseq==0.12.3"

def installed_fairseq_distribution():
    """Return the name of the installed distribution that provides ``fairseq``, or None."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import importlib.metadata as m; "
             "print(' '.join(m.packages_distributions().get('fairseq', [])))"],
            env=environment, capture_output=True, text=True, timeout=120, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = result.stdout.split()
    return names[0] if names else None


def fairseq_requirement():
    if os.environ.get("LEAP_FAIRSEQ_REQUIREMENT"):
        return [os.environ["LEAP_FAIRSEQ_REQUIREMENT"]]
    existing = installed_fairseq_distribution()
    if existing is not None and existing.lower() != "leap_fairseq":
        # Keep the user's fairseq; naming it makes pip check it is there
        # without replacing it.
        return [existing]
    return [VE_FAIRSEQ]


setup(
    name="leap_fairseq",
    version="0.1.0",
    description="LeaP linear attention for fairseq: autoregressive and simultaneous "
    "speech translation with recurrent-state streaming",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["leap_fairseq", "leap_fairseq.*"]),
    install_requires=fairseq_requirement()
    + [
        "torch>=2.1",
        "torchaudio>=2.1",
        "sentencepiece>=0.1.99",
        "simuleval==1.1.4",
        "sacrebleu>=2.0,<3",
        "soundfile>=0.12",
        "PyYAML>=5.4",
        "tqdm>=4.50",
        "numpy>=1.21",
        "matplotlib>=3.5",
    ],
    extras_require={"test": ["pytest>=7,<9"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
