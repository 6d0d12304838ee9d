"""Build and install mentormix-fast.

    pip install -r requirements.txt
    pip install --no-build-isolation .      # or -e . for development

The Triton kernels in ``kernels/`` install as the subpackage ``mentormix_fast.kernels``. The compiled
extension ``mentormix_fast._C`` (``csrc/``) is described by :func:`extensions`.
"""

from setuptools import setup


def extensions():
    """The C++/CUDA extensions this machine can build (empty until csrc/ has sources)."""
    return [], {}


ext_modules, cmdclass = extensions()

setup(
    name="mentormix-fast",
    version="0.1.0",
    description="MentorMix (Jiang et al., ICML 2020) for PyTorch: reference, fused Triton and C++/CUDA kernels",
    python_requires=">=3.10",
    packages=["mentormix_fast", "mentormix_fast.kernels"],
    package_dir={"mentormix_fast": "mentormix_fast", "mentormix_fast.kernels": "kernels"},
    package_data={"mentormix_fast": ["data/*.json"]},
    install_requires=["torch", "numpy"],
    extras_require={"triton": ["triton"], "demo": ["scikit-learn"], "train": ["torchvision"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
