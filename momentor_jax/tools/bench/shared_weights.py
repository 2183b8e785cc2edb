"""One set of weights for both sides of a JAX-vs-PyTorch comparison (the `torch` and `decode` suites).

A config file (`configs/FILE.py[:variant]`) gives the model; its parameters are drawn at random on the host (numpy,
seconds even for the bench model, where a jitted `Momentor.init` compiles for minutes on CPU), written as a
Momentor checkpoint and exported with `convert export_hf`. The PyTorch side loads the export (llm/, vision/,
momentor_extras.safetensors); the JAX side keeps the very arrays that were exported.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys

import jax
import numpy as np

from momentor_jax.models.config import MomentorConfig

# The PyTorch reference lives with the tests that prove parity with it; the suites load it from the source checkout.
TORCH_REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "tests", "torch_momentor.py")


def fp32_model_config(config) -> MomentorConfig:
    """The config's MomentorConfig computed in float32 (both sides of a comparison run fp32 on CPU)."""
    model = MomentorConfig.from_dict(config.model)
    return dataclasses.replace(model, vision=dataclasses.replace(model.vision, dtype="float32"),
                               llm=dataclasses.replace(model.llm, dtype="float32"))


def random_params(config: MomentorConfig, seed: int = 0) -> dict:
    """Every Momentor parameter drawn with numpy: N(0, 0.02) tables and kernels, norm scales near 1, small biases
    (not the trivial ones/zeros, so a mistake in a norm or bias shows in the comparison)."""
    import flax.linen as nn  # noqa: PLC0415

    from momentor_jax.models.momentor import Momentor, example_batch  # noqa: PLC0415

    batch = example_batch(config, 1, 8)
    shapes = jax.eval_shape(lambda: nn.unbox(Momentor(config).init(jax.random.PRNGKey(0), batch)["params"]))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        noise = rng.standard_normal(leaf.shape, dtype=np.float32)
        if name == "scale":
            return 1.0 + 0.1 * noise
        return 0.02 * noise

    return jax.tree_util.tree_map_with_path(draw, shapes)


def unroll_layers(params: dict, config: MomentorConfig) -> tuple[dict, MomentorConfig]:
    """The same weights with every layer stack unrolled (`scan_layers=False`: layers_0, layers_1, ... instead of
    one stacked `layers` tree that nn.scan slices)."""
    from momentor_jax.models import llama  # noqa: PLC0415

    params, vision = dict(params), config.vision
    params["llm"], llm = llama.unrolled(params["llm"], config.llm)
    if vision.scan_layers:
        if "vision" in params:
            params["vision"] = llama.unstack_layers(params["vision"], vision.num_layers)
        vision = dataclasses.replace(vision, scan_layers=False)
    return params, dataclasses.replace(config, llm=llm, vision=vision)


def layers_description(config: MomentorConfig) -> str:
    return ("stacked, nn.scan over the layers" if config.llm.scan_layers
            else "unrolled (one parameter tree per layer)")


def export_weights(params: dict, config: MomentorConfig, directory: str) -> str:
    """Writes DIRECTORY/checkpoint (Momentor params) and DIRECTORY/export (`convert export_hf`); returns the
    export dir."""
    from momentor_jax import checkpoints  # noqa: PLC0415
    from momentor_jax.convert import commands  # noqa: PLC0415

    checkpoint = os.path.join(directory, "checkpoint")
    export = os.path.join(directory, "export")
    checkpoints.save_params(checkpoint, params, config)
    commands.export_hf(checkpoint, export, log=lambda message: None)
    return export


def torch_reference():
    """The module tests/torch_momentor.py (one module object, also when the tests imported it first)."""
    if "torch_momentor" in sys.modules:
        return sys.modules["torch_momentor"]
    if not os.path.isfile(TORCH_REFERENCE):
        raise FileNotFoundError(f"{TORCH_REFERENCE} not found: the torch and decode suites run from a source "
                                "checkout, whose tests/ holds the PyTorch reference")
    spec = importlib.util.spec_from_file_location("torch_momentor", TORCH_REFERENCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["torch_momentor"] = module
    spec.loader.exec_module(module)
    return module


def params_and_torch_reference(config: MomentorConfig, seed: int, attention: str):
    """(random JAX params, the PyTorch Momentor built from their `export_hf` export): the two sides of a comparison
    on the same weights."""
    import tempfile  # noqa: PLC0415

    params = random_params(config, seed)
    with tempfile.TemporaryDirectory() as directory:
        export = export_weights(params, config, directory)
        reference = torch_reference().TorchMomentor(export, config, attn_implementation=attention).eval()
    return params, reference


def usable_cores() -> int:
    """Cores this process may run on (what XLA's CPU thread pool uses too)."""
    return len(os.sched_getaffinity(0))


def configure_torch() -> dict:
    """Imports torch with one thread per usable core and OpenMP's passive wait policy (unless the environment
    already sets OMP_WAIT_POLICY); returns both settings for the printed line and the JSON.

    On a shared, oversubscribed machine the default policy (spinning at every parallel-region barrier) slows
    PyTorch down several times over, which would credit JAX with PyTorch's scheduling trouble (docs/measurements.md).
    """
    if "torch" in sys.modules:
        policy = "torch was imported before: OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "(unset)")
    else:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads libgomp
        policy = os.environ["OMP_WAIT_POLICY"]
    import torch  # noqa: PLC0415

    threads = usable_cores()
    torch.set_num_threads(threads)
    return {"threads": threads, "omp_wait_policy": policy}


def torch_settings_line(settings: dict, attention: str) -> str:
    threads = settings["threads"]
    return (f"torch threads: {threads} (torch.set_num_threads = the {threads} usable cores XLA's CPU pool also "
            f"uses), OMP_WAIT_POLICY {settings['omp_wait_policy']}; transformers attention: {attention}")
