"""Install mmf-fashionvil.

MMF itself must be installed with ``pip install --no-deps mmf==1.0.0rc10`` (its
pins predate today's torch and transformers); see README.md.
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Python executes `import` lines of *.pth files in site-packages at start-up. This
# one installs the import hook of mmf_fashionvil.compat before anything imports
# mmf, so the stock `mmf_run` entry point works on the modern stack.
STARTUP_PTH = "mmf_fashionvil_startup.pth"
STARTUP_LINE = "import mmf_fashionvil.startup\n"


class BuildWithStartupHook(build_py):
    """Places the start-up .pth at the root of the wheel (regular and editable)."""

    def run(self):
        super().run()
        with open(os.path.join(self.build_lib, STARTUP_PTH), "w") as f:
            f.write(STARTUP_LINE)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, STARTUP_PTH)
        ]


setup(
    name="mmf-fashionvil",
    version="0.1.0",
    description="FashionViL (Han et al., ECCV 2022) as a plugin for MMF on modern PyTorch",
    packages=find_packages(include=["mmf_fashionvil", "mmf_fashionvil.*"]),
    package_data={"mmf_fashionvil": ["configs/**/*.yaml", "configs/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",
        "torchvision",
        "transformers>=5.0,<6",
        "omegaconf>=2.1",
        "nltk>=3.8",
        "lmdb>=1.4",
        "h5py>=3.8",  # prepare fashiongen: the official HDF5 release
        "demjson3",
        "requests",
        "scikit-learn",  # imported by rc10's mmf.modules.metrics
        "tqdm",
        "termcolor",
        "pillow",
        "numpy",
    ],
    extras_require={"test": ["pytest"]},
    cmdclass={"build_py": BuildWithStartupHook},
)
