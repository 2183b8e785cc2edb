"""The Momentor trainer: sharded state, one jitted train step, the loop with logging, checkpoints and resume.

Sections, top to bottom:
  1. TrainState and its sharded creation (eval_shape -> logical specs -> mesh shardings -> jit(init)).
  2. The train step: loss on the trainable split only, micro-batch accumulation, clipping + AdamW;
     `build_train_step`, the one jitted step (with its state factory and mesh context) that training, tools.aot
     and tools.bench run.
  3. Warm starts (`init_from`).
  4. The loop: restore or create the state; data -> global batch -> step; metrics fetched only at log and
     checkpoint steps; held-out evaluation every config.evals.every_steps (training/evals.py); async checkpoints;
     SIGTERM; non-finite stop.
  5. `train(config, workdir)`: config checks, tokenizer, Grain loader, step count, then the loop.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentor_jax import checkpoints, fileio
from momentor_jax.models import momentor as momentor_lib
from momentor_jax.models import partition
from momentor_jax.models.loss import compute_loss, compute_loss_parts
from momentor_jax.models.config import MomentorConfig
from momentor_jax.training import flops as flops_lib
from momentor_jax.training import metrics_writer as metrics_lib
from momentor_jax.training import optim, sharding


class NonFiniteError(RuntimeError):
    """Raised when a step produced a non-finite loss or gradient; the bad state is never checkpointed."""


class StartupError(ValueError):
    """A run that cannot start as configured (config, data, tokenizer, checkpoint); the message names the field,
    file or parameter. `train` reports it in one line."""


# ---------------------------------------------------------------------------------------------- 1. train state
@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 []: updates applied so far
    rng: jax.Array           # uint32 [2]: base key; step s uses fold_in(rng, s)
    trainable: Any           # parameters the optimizer updates
    frozen: Any              # parameters that never change (no gradient, no optimizer state)
    opt_state: Any

    @property
    def params(self) -> dict:
        return partition.merge_params(self.trainable, self.frozen)


@dataclasses.dataclass
class ModelFns:
    """How the trainer talks to a model (so the step can be tested with any flax module).

    init(rng, batch) -> params (boxed with logical axis names); apply(params, batch, rng) -> logits;
    loss(logits, batch) -> (scalar token-mean loss, aux with 'num_text_tokens' / 'num_temporal_tokens' and
    per-kind means 'text_loss' / 'temporal_loss'). The trainer calls `loss_terms`: `terms(params, batch, rng)` when
    given (a model whose loss need not see every position's logits), else loss(apply(...), batch).
    """
    init: Callable
    apply: Callable
    loss: Callable
    terms: Optional[Callable] = None

    def loss_terms(self, params, batch: dict, rng):
        """(scalar token-mean loss, aux) of a batch."""
        if self.terms is not None:
            return self.terms(params, batch, rng)
        return self.loss(self.apply(params, batch, rng), batch)


# The batch fields the loss reads at each position (gathered with the logits under MomentorConfig.loss_positions).
LOSS_FIELDS = ("targets", "loss_mask", "target_times")


def momentor_fns(model_config: MomentorConfig) -> ModelFns:
    model = momentor_lib.Momentor(model_config)
    count = model_config.loss_positions

    def init(rng, batch):
        return model.init({"params": rng}, batch)["params"]

    def apply(params, batch, rng):
        logits, _ = model.apply({"params": params}, batch, rngs={"dropout": rng})
        return logits

    def loss(logits, batch):
        return compute_loss(logits, batch, model_config)

    def terms(params, batch, rng):
        if not count or count >= batch["loss_mask"].shape[1]:
            return loss(apply(params, batch, rng), batch)
        indices, overflow = momentor_lib.head_positions(batch["loss_mask"], count)
        hidden = model.apply({"params": params}, batch, method=momentor_lib.Momentor.hidden_states,
                             rngs={"dropout": rng})
        fields = {k: batch[k] for k in LOSS_FIELDS}

        def head(hidden, fields):
            parts = model.apply({"params": params}, hidden, method=momentor_lib.Momentor.output_logit_parts)
            return compute_loss_parts(*parts, fields, model_config)

        def at_supervised(hidden, fields):
            gathered = jnp.take_along_axis(hidden, indices[..., None], axis=1)
            gathered = nn.with_logical_constraint(gathered, ("batch", "length", "embed"))
            return head(gathered, {k: jnp.take_along_axis(v, indices, axis=1) for k, v in fields.items()})

        # Only the head is under the branch: the forward and its backward compile once, outside it. The fallback
        # is rematerialized: under autodiff the branch that runs fills in the other's saved residuals with zeros,
        # and the fallback's would be its [B, L, V + N] logits, written on every step (docs/measurements.md).
        return jax.lax.cond(overflow, jax.checkpoint(head), at_supervised, hidden, fields)

    return ModelFns(init=init, apply=apply, loss=loss, terms=terms)


class StateFactory:
    """Builds the abstract train state, its shardings, and real states on the mesh."""

    def __init__(self, fns: ModelFns, tx: optax.GradientTransformation, mesh, rules, trainable_mode: str,
                 init_batch: Mapping[str, np.ndarray]):
        self.fns, self.tx, self.mesh, self.rules, self.mode = fns, tx, mesh, rules, trainable_mode
        self.init_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in init_batch.items()}
        with self.mesh_context():
            boxed = jax.eval_shape(self._init_boxed, jax.ShapeDtypeStruct((2,), jnp.uint32))
        self.shardings = sharding.logical_to_shardings(boxed, mesh, rules)
        self.abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                     nn.unbox(boxed), self.shardings)
        self.param_shardings = partition.merge_params(self.shardings.trainable, self.shardings.frozen)
        self.abstract_params = partition.merge_params(self.abstract.trainable, self.abstract.frozen)
        if not jax.tree.leaves(self.abstract.trainable):
            raise ValueError(f"trainable={trainable_mode!r} leaves no parameter to train")

    def mesh_context(self):
        """`with` this: the mesh (for sharding constraints) and the logical axis rules, as every jit of the
        state and the step needs."""
        return _MeshContext(self.mesh, self.rules)

    def _split(self, params):
        return partition.split_params(params, partition.trainable_mask(params, self.mode))

    def _state_from_params(self, params, rng) -> TrainState:
        trainable, frozen = self._split(params)
        return TrainState(step=jnp.zeros((), jnp.int32), rng=rng, trainable=trainable, frozen=frozen,
                          opt_state=self.tx.init(trainable))

    def _init_boxed(self, seed_key) -> TrainState:
        init_rng, train_rng = jax.random.split(seed_key)
        batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in self.init_batch.items()}
        return self._state_from_params(self.fns.init(init_rng, batch), train_rng)

    def random_init(self, seed: int) -> TrainState:
        """A fresh state, each parameter created directly in its shard."""
        key = jax.random.PRNGKey(seed)
        with self.mesh_context():
            init = jax.jit(lambda k: nn.unbox(self._init_boxed(k)), out_shardings=self.shardings)
            if jax.default_backend() != "cpu":
                return init(key)
            # LLVM spends most of a CPU compile of this run-once program optimising the threefry hashes of every
            # initializer (seconds per parameter array); unoptimised it compiles ~5x faster.
            return init.lower(key).compile(compiler_options={"xla_backend_optimization_level": 0})(key)

    def from_params(self, params, seed: int) -> TrainState:
        """A fresh state (step 0, new optimizer state) around given, already sharded parameters."""
        _, train_rng = jax.random.split(jax.random.PRNGKey(seed))
        with self.mesh_context():
            build = jax.jit(self._state_from_params, out_shardings=self.shardings, donate_argnums=(0,))
            return build(params, train_rng)

    def train_part(self, state_or_abstract) -> dict:
        """The `train` checkpoint item: everything but the parameters."""
        s = state_or_abstract
        return {"step": s.step, "rng": s.rng, "opt_state": s.opt_state}

    def assemble(self, params, train_part) -> TrainState:
        trainable, frozen = self._split(params)
        return TrainState(step=train_part["step"], rng=train_part["rng"], trainable=trainable, frozen=frozen,
                          opt_state=train_part["opt_state"])


class _MeshContext:
    """`with` both the mesh (for sharding constraints) and the logical axis rules."""

    def __init__(self, mesh, rules):
        self.mesh, self.rules, self._stack = mesh, rules, []

    def __enter__(self):
        for cm in (jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules)):
            cm.__enter__()
            self._stack.append(cm)
        return self

    def __exit__(self, *exc):
        while self._stack:
            self._stack.pop().__exit__(*exc)
        return False


def build_state_factory(config, model_config: MomentorConfig, mesh, total_steps: int, fns: ModelFns,
                        init_batch: Optional[dict] = None) -> tuple[StateFactory, optax.GradientTransformation,
                                                                    optax.Schedule]:
    """(state factory, optimizer, schedule) for a config on a mesh."""
    rules = sharding.axis_rules(config.logical_axis_rules)
    tx, schedule = optim.make_optimizer(config, total_steps)
    if init_batch is None:  # parameter shapes do not depend on the batch size: initialise on one example
        init_batch = momentor_lib.example_batch(model_config, 1, config.max_length)
    return StateFactory(fns, tx, mesh, rules, config.trainable, init_batch), tx, schedule


# ----------------------------------------------------------------------------------------------- 2. the step
def _split_micro_batches(batch: dict, num_micro: int) -> dict:
    """[B, ...] -> [A, B / A, ...] taking rows i, i + A, i + 2A, ... into micro-batch i, so every device keeps an
    equal share of each micro-batch (a contiguous split would put a micro-batch on a subset of devices)."""
    def split(x):
        x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)
        spec = jax.sharding.PartitionSpec(None, sharding.BATCH_MESH_AXES)
        return jax.lax.with_sharding_constraint(x, spec)
    return jax.tree.map(split, batch)


def token_sums(fns: ModelFns, params, batch: dict, rng) -> dict:
    """The batch's loss terms as token sums (means x token counts), so batches and micro-batches add up; the train
    step and the evaluation step (training/evals.py) both measure with this."""
    loss, aux = fns.loss_terms(params, batch, rng)
    n_text, n_temp = aux["num_text_tokens"], aux["num_temporal_tokens"]
    sums = {
        "loss": loss * (n_text + n_temp),
        "text_loss": aux["text_loss"] * n_text,
        "temporal_loss": aux["temporal_loss"] * n_temp,
        "num_tokens": n_text + n_temp,
        "num_text_tokens": n_text,
        "num_temporal_tokens": n_temp,
        "num_input_tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
        # dialogues: each row's largest segment id (1 per row unpacked)
        "num_examples": jnp.sum(jnp.max(batch["segment_ids"], axis=-1)).astype(jnp.float32),
    }
    if "temporal_accuracy" in aux:
        sums["temporal_accuracy"] = aux["temporal_accuracy"] * n_temp
    return sums


def make_train_step(fns: ModelFns, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int = 1) -> Callable:
    """(state, batch) -> (state, metrics). Pure; `build_train_step` jits it with shardings."""

    def summed_loss(trainable, frozen, batch, rng):
        sums = token_sums(fns, partition.merge_params(trainable, frozen), batch, rng)
        # Differentiating the token sum (not the mean) lets micro-batches add up to the full-batch gradient.
        return sums["loss"], sums

    grad_fn = jax.value_and_grad(summed_loss, has_aux=True)

    def micro_step(trainable, frozen, batch, rng):
        (_, sums), grads = grad_fn(trainable, frozen, batch, rng)
        return grads, sums

    def train_step(state: TrainState, batch: dict):
        step_rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum_steps == 1:
            grads, sums = micro_step(state.trainable, state.frozen, batch, step_rng)
        else:
            micro = _split_micro_batches(batch, grad_accum_steps)

            def body(carry, xs):
                index, micro_batch = xs
                grads, sums = micro_step(state.trainable, state.frozen, micro_batch,
                                         jax.random.fold_in(step_rng, index))
                return jax.tree.map(jnp.add, carry, (grads, sums)), None

            zero_sums = jax.eval_shape(lambda: micro_step(state.trainable, state.frozen,
                                                          jax.tree.map(lambda x: x[0], micro), step_rng)[1])
            carry = (jax.tree.map(jnp.zeros_like, state.trainable),
                     jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_sums))
            (grads, sums), _ = jax.lax.scan(body, carry, (jnp.arange(grad_accum_steps), micro))

        num_tokens = jnp.maximum(sums["num_tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / num_tokens, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)

        metrics = {
            "loss": sums["loss"] / num_tokens,
            "text_loss": sums["text_loss"] / jnp.maximum(sums["num_text_tokens"], 1.0),
            "temporal_loss": sums["temporal_loss"] / jnp.maximum(sums["num_temporal_tokens"], 1.0),
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
            "num_tokens": sums["num_tokens"],
            "num_input_tokens": sums["num_input_tokens"],
            "examples_per_step": sums["num_examples"],
            "packing_efficiency": sums["num_input_tokens"] / batch["segment_ids"].size,
        }
        if "temporal_accuracy" in sums:
            metrics["temporal_accuracy"] = sums["temporal_accuracy"] / jnp.maximum(sums["num_temporal_tokens"], 1.0)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        metrics["finite"] = finite
        # A non-finite step leaves the state as it was; the loop stops at its next metrics fetch.
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = state.replace(step=state.step + finite.astype(jnp.int32),
                                  trainable=jax.tree.map(keep, trainable, state.trainable),
                                  opt_state=jax.tree.map(keep, opt_state, state.opt_state))
        return new_state, metrics

    return train_step


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The train step of one config on one mesh, and what it was built from.

    `jitted` is make_train_step jitted with the state's shardings in and out (the state donated) and the batch split
    over (data, fsdp); call it (or `.lower` / `.trace` it) inside `mesh_context()`, or call the TrainStep itself.
    `factory` gives the state's shardings, its abstract (sharded ShapeDtypeStruct) form and real states.
    """
    jitted: Any                         # jax.jit-wrapped (state, global batch) -> (state, metrics)
    factory: StateFactory
    tx: optax.GradientTransformation
    schedule: optax.Schedule

    @property
    def mesh(self):
        return self.factory.mesh

    def mesh_context(self):
        return self.factory.mesh_context()

    def __call__(self, state: TrainState, batch: dict):
        with self.mesh_context():
            return self.jitted(state, batch)


def build_train_step(config, model_config: MomentorConfig, mesh, total_steps: int, fns: Optional[ModelFns] = None,
                     init_batch: Optional[dict] = None) -> TrainStep:
    """The one train step that training, tools.aot and tools.bench run: the state factory and optimizer of
    `build_state_factory`, the step of `make_train_step` (config.grad_accum_steps), jitted with the shardings.
    `fns` defaults to the Momentor model of `model_config`; `total_steps` shapes the learning-rate schedule."""
    fns = momentor_fns(model_config) if fns is None else fns
    factory, tx, schedule = build_state_factory(config, model_config, mesh, total_steps, fns, init_batch)
    step_fn = make_train_step(fns, tx, schedule, config.grad_accum_steps)
    jitted = jax.jit(step_fn, in_shardings=(factory.shardings, sharding.batch_sharding(mesh)),
                     out_shardings=(factory.shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    return TrainStep(jitted=jitted, factory=factory, tx=tx, schedule=schedule)


# ------------------------------------------------------------------------------------- 3. warm starts, restore
def warm_start_params(init_from: str, factory: StateFactory) -> Any:
    """Parameters of any checkpoint layout (a previous run's workdir: its latest step; a step directory; a converted
    checkpoint from `convert import_hf`), restored straight onto the model's shardings."""
    located = checkpoints.locate(init_from)
    params = checkpoints.load_params(located.params_dir, factory.abstract_params)
    logging.info("init_from: parameters of %s", located.params_dir)
    return params


def count_params(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------------------------- 4. the loop
class StopSignal:
    """SIGTERM (and SIGINT) set a flag the loop checks between steps: it saves and exits cleanly.

    Multi-process runs rely instead on JAX's preemption sync point (via orbax), so all processes stop at the same
    step; a local flag could differ between processes.
    """

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous = {}
        if jax.process_count() == 1:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    pass

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop waiting for the step to finish
            self.restore()
            raise KeyboardInterrupt(f"signal {signum} received twice")
        logging.warning("received signal %d: saving a checkpoint after this step, then exiting", signum)
        self.signal = signum

    def requested(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    step: int
    history: list           # [(step, {metric: float})] for every step this process ran
    stopped_early: bool     # SIGTERM / preemption, or the data ran out


class _MetricsBuffer:
    """Device metrics of steps not yet fetched; fetched together at log / checkpoint steps (one host sync)."""

    def __init__(self):
        self.pending: list = []

    def add(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))

    def fetch(self) -> list:
        steps = [s for s, _ in self.pending]
        values = jax.device_get([m for _, m in self.pending])
        self.pending = []
        fetched = [(s, {k: float(v) for k, v in m.items()}) for s, m in zip(steps, values)]
        for step, metrics in fetched:
            if not metrics.pop("finite"):
                raise NonFiniteError(
                    f"step {step}: non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}); "
                    "stopping without saving this state (the last checkpoint is intact). Try a lower learning "
                    "rate, gradient clipping, or fp32 compute (model.llm.dtype).")
        return fetched


def _summarize(fetched: list) -> dict:
    keys = fetched[-1][1].keys()
    summary = {k: float(np.mean([m[k] for _, m in fetched])) for k in keys}
    summary["learning_rate"] = fetched[-1][1]["learning_rate"]
    return summary


def run_loop(*, config, workdir: str, fns: ModelFns, model_config: MomentorConfig, mesh, data_iterator,
             total_steps: int, init_batch: Optional[dict] = None, eval_examples=None,
             grounding_eval=None) -> TrainResult:
    """Creates or restores the state and trains to `total_steps`. `data_iterator` is a grain.DatasetIterator of
    per-process numpy batches (Grain's orbax handler checkpoints its state); `init_batch` (default: one zero example
    of the model's batch layout) only gives shapes for parameter creation; `eval_examples`
    (data/loader.EvalExamples) are evaluated every config.evals.every_steps steps, `grounding_eval`
    (evals.GroundingEval) runs every config.evals.grounding_every_steps (training/evals.py)."""
    started = time.perf_counter()
    logging.info("creating the train state (shapes and shardings; restore, warm start or a compiled random init) ...")
    train_step = build_train_step(config, model_config, mesh, total_steps, fns, init_batch)
    factory = train_step.factory
    ckpt = checkpoints.Checkpointer(fileio.join(workdir, checkpoints.CHECKPOINTS_DIR),
                                    save_every_steps=config.checkpoint_every_steps,
                                    keep=config.keep_checkpoints, async_save=config.async_checkpointing)
    writer = metrics_lib.MetricsWriter(fileio.join(workdir, "tensorboard"))
    stop = StopSignal()
    try:
        state, start_step = _initial_state(config, factory, ckpt, data_iterator)
        logging.info("train state ready in %.1f s", time.perf_counter() - started)
        logging.info("mesh %s | params: %s trainable, %s frozen | steps %d -> %d", dict(mesh.shape),
                     f"{count_params(state.trainable):,}", f"{count_params(state.frozen):,}", start_step,
                     total_steps)
        if start_step == 0:
            writer.write_text(0, "config", "```\n" + str(config) + "\n```")
        evaluators = [grounding_eval] if grounding_eval is not None else []
        if eval_examples is not None:
            from momentor_jax.training import evals as evals_lib  # noqa: PLC0415 (it builds on this module)
            evaluators.insert(0, evals_lib.HeldOutEval(eval_examples, fns, factory,
                                                       evals_lib.eval_batch_size(config),
                                                       evals_lib.every_steps(config)))
        return _train(config, state, start_step, total_steps, train_step, factory, ckpt, writer, stop,
                      data_iterator, model_config, evaluators)
    finally:
        stop.restore()
        ckpt.close()   # waits for the save in flight
        writer.close()


def _initial_state(config, factory: StateFactory, ckpt: checkpoints.Checkpointer, data_iterator):
    try:
        restored = ckpt.restore_latest_intact(factory.abstract_params, factory.train_part(factory.abstract),
                                              data_iterator)
    except ValueError as e:
        raise StartupError(str(e)) from None
    if restored is not None:
        logging.info("resumed from step %d (%s)", restored.step, ckpt.directory)
        return factory.assemble(restored.params, restored.train), restored.step
    if config.init_from:
        try:
            params = warm_start_params(config.init_from, factory)
        except (ValueError, FileNotFoundError) as e:
            raise StartupError(str(e)) from None
        return factory.from_params(params, config.seed), 0
    if config.get("requires_init_from", False):
        hint = ("the GESM run's workdir" if config.get("variant") == "instruct"
                else "an imported checkpoint (python -m momentor_jax.convert import_hf)")
        raise StartupError(f"this config starts from pretrained weights: set --config.init_from to {hint}")
    return factory.random_init(config.seed), 0


def _train(config, state, start_step, total_steps, step_fn, factory, ckpt, writer, stop, data_iterator,
           model_config, evaluators=()) -> TrainResult:
    mesh, max_length = factory.mesh, config.max_length
    buffer, history = _MetricsBuffer(), []
    tokens_per_step = config.batch_size * max_length
    flops_per_step = config.batch_size * flops_lib.training_flops_per_example(
        model_config, max_length, config.trainable, max(videos_per_row(config), 1))
    peak = flops_lib.peak_flops_per_device(config.peak_flops_per_device) * jax.device_count()
    timer_start, timer_step = time.perf_counter(), start_step
    stopped_early, step = False, start_step

    for step in range(start_step + 1, total_steps + 1):
        try:
            local_batch = next(data_iterator)
        except StopIteration:
            logging.warning("the data ran out after %d steps (wanted %d)", step - 1, total_steps)
            step, stopped_early = step - 1, True
            if step > start_step:
                _save(ckpt, step, state, factory, data_iterator, buffer, history)
            break
        if step == start_step + 1:
            logging.info("step %d: compiling the train step (the first step includes compilation) ...", step)
        state, metrics = step_fn(state, sharding.global_batch(local_batch, mesh))
        buffer.add(step, metrics)
        if step == start_step + 1:  # keep compilation out of the throughput numbers
            jax.block_until_ready(metrics)
            logging.info("step %d done in %.1f s (compilation included)", step, time.perf_counter() - timer_start)
            timer_start, timer_step = time.perf_counter(), step

        last = step == total_steps
        preempted = stop.requested() or ckpt.reached_preemption(step)
        if step % config.log_every_steps == 0 or last:
            fetched = buffer.fetch()
            history.extend(fetched)
            now = time.perf_counter()
            scalars = _summarize(fetched)
            if step > timer_step:
                step_time = (now - timer_start) / (step - timer_step)
                # tokens_per_sec counts padded positions (the work MFU measures); real_tokens_per_sec non-padding.
                scalars.update(step_time=step_time, tokens_per_sec=tokens_per_step / step_time,
                               real_tokens_per_sec=scalars["num_input_tokens"] / step_time,
                               examples_per_sec=scalars["examples_per_step"] / step_time)
                if peak > 0:
                    scalars["mfu"] = flops_per_step / step_time / peak
                eta = (total_steps - step) * step_time
                timer_start, timer_step = now, step
            else:
                eta = None
            for name in ("num_skipped_records", "num_clipped_times"):  # bad input met so far (data/loader.py)
                if isinstance(getattr(data_iterator, name, None), int):
                    scalars[name.removeprefix("num_")] = float(getattr(data_iterator, name))
            epoch = _epoch(data_iterator)
            if epoch is not None:
                scalars["epoch"] = epoch
            writer.write_scalars(step, scalars)
            writer.log_progress(step, total_steps, scalars, eta, packing=bool(config.data.packing))
        for evaluator in evaluators:
            evaluator.maybe_run(step, state, writer)
        if last or preempted or ckpt.should_save(step):
            _save(ckpt, step, state, factory, data_iterator, buffer, history)
        if preempted:
            logging.warning("stopped at step %d after a termination request; re-run the same command to resume",
                            step)
            stopped_early = True
            break
    writer.flush()
    return TrainResult(state=state, step=step, history=history, stopped_early=stopped_early)


def _epoch(data_iterator) -> Optional[float]:
    """Epochs of dialogues read so far (this process's count x processes / dialogues), when the loader counts."""
    seen, total = getattr(data_iterator, "num_examples_seen", None), getattr(data_iterator, "num_examples", 0)
    if seen is None or not total:
        return None
    return seen * jax.process_count() / total


def _save(ckpt, step, state, factory, data_iterator, buffer, history) -> None:
    history.extend(buffer.fetch())  # raises NonFiniteError before a bad state reaches disk
    ckpt.save(step, state.params, factory.train_part(state), data_iterator, force=True)


# ------------------------------------------------------------------------------------------- 5. from a config
def data_paths(config) -> dict:
    """{'examples', 'frames', 'tokenizer'} from the explicit keys, else from the `data.dir` layout (`frames` is
    <data.dir>/features with data.use_features)."""
    data_dir = config.data.dir
    paths = {"examples": config.data.examples, "frames": config.data.frames, "tokenizer": config.tokenizer}
    videos = "features" if config.data.use_features else "frames"  # data/extract_features.py's or frame records
    defaults = {"examples": f"{config.variant}_train.jsonl", "frames": videos, "tokenizer": "tokenizer"}
    for key, name in defaults.items():
        if not paths[key]:
            if not data_dir:
                raise ValueError(f"set data.dir (prepared data) or the explicit path for {key!r} "
                                 f"(config key {'tokenizer' if key == 'tokenizer' else 'data.' + key})")
            paths[key] = fileio.join(data_dir, name)
    return paths


def load_tokenizer(path: str, model_config: MomentorConfig):
    """A MomentorTokenizer directory (tokenizer.save) or a bare sentencepiece .model; checked against the model."""
    from momentor_jax.data.tokenizer import ADDED_TOKENS_FILENAME, MomentorTokenizer  # noqa: PLC0415
    whitespace = model_config.added_token_whitespace  # the model is trained and prompted with one tokenization
    if fileio.exists(fileio.join(path, ADDED_TOKENS_FILENAME)):  # local or gs://
        tokenizer = MomentorTokenizer.load(path, whitespace)
    elif fileio.isfile(path):
        tokenizer = MomentorTokenizer(path, model_config.num_temporal_tokens, whitespace)
    else:
        raise FileNotFoundError(f"tokenizer {path}: neither a MomentorTokenizer directory nor a sentencepiece model "
                                f"(write one with: python data/make_tokenizer.py --sentencepiece "
                                f"LLAMA_DIR/tokenizer.model --out {path})")
    if tokenizer.vocab_size != model_config.llm.vocab_size:
        raise ValueError(f"tokenizer {path}: vocabulary V = {tokenizer.vocab_size}, but model.llm.vocab_size = "
                         f"{model_config.llm.vocab_size}")
    if tokenizer.num_temporal_tokens != model_config.num_temporal_tokens:
        raise ValueError(f"tokenizer {path}: {tokenizer.num_temporal_tokens} temporal tokens, the model has "
                         f"{model_config.num_temporal_tokens}")
    return tokenizer


def check_config(config, model_config: MomentorConfig, mesh) -> None:
    """Errors a run would otherwise hit late (or silently): divisibility, lengths, modes."""
    dp = sharding.data_parallel_size(mesh)
    micro = config.batch_size // max(config.grad_accum_steps, 1)
    if config.grad_accum_steps < 1 or config.batch_size % config.grad_accum_steps:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by grad_accum_steps "
                         f"{config.grad_accum_steps}")
    if micro % dp:
        raise ValueError(f"micro-batch {micro} (batch_size / grad_accum_steps) is not divisible by the "
                         f"data-parallel size {dp} (mesh data x fsdp = {dict(mesh.shape)})")
    if config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} processes")
    if config.max_length > model_config.llm.max_position_embeddings:
        raise ValueError(f"max_length {config.max_length} exceeds model.llm.max_position_embeddings "
                         f"{model_config.llm.max_position_embeddings}")
    if config.trainable not in partition.MODES or config.trainable == "none":
        raise ValueError(f"trainable={config.trainable!r}: choose one of "
                         f"{', '.join(repr(m) for m in partition.MODES if m != 'none')}")
    if config.log_every_steps < 1 or config.checkpoint_every_steps < 1:
        raise ValueError("log_every_steps and checkpoint_every_steps must be >= 1")
    packing_options(config)  # validates data.packing's settings
    from momentor_jax.training import evals as evals_lib  # noqa: PLC0415 (it builds on this module)
    evals_lib.check_config(config, mesh)


def packing_options(config):
    """data/packing.PackingOptions from config.data, or None when data.packing is off; raises ValueError naming the
    config key."""
    from momentor_jax.data.packing import PackingOptions  # noqa: PLC0415
    data = config.data
    if not data.get("packing", False):
        return None
    for key in ("max_segments", "max_videos_per_row", "packing_buffer"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"data.{key} must be an integer >= 1, got {value!r}")
    if data.max_videos_per_row > data.max_segments:
        raise ValueError(f"data.max_videos_per_row {data.max_videos_per_row} > data.max_segments "
                         f"{data.max_segments}: every video belongs to one dialogue (segment)")
    return PackingOptions(int(config.max_length), int(data.max_segments), int(data.max_videos_per_row),
                          int(data.packing_buffer))


def videos_per_row(config) -> int:
    """The batch's per-row video axis: data.max_videos_per_row when packing, else 0 (no axis)."""
    return int(config.data.max_videos_per_row) if config.data.get("packing", False) else 0


def resolve_total_steps(config, num_examples: int, examples_per_row: float = 1.0) -> int:
    """total_steps, or num_epochs passes over `num_examples` dialogues at batch_size rows of `examples_per_row`
    dialogues each (1 unpacked; packed: the loader's estimate)."""
    if config.total_steps and config.total_steps > 0:
        return int(config.total_steps)
    examples_per_step = config.batch_size * examples_per_row
    if examples_per_row == 1.0:
        steps_per_epoch = num_examples // config.batch_size
    else:
        steps_per_epoch = math.ceil(num_examples / examples_per_step)
    total = steps_per_epoch * config.num_epochs
    if total < 1:
        raise ValueError(f"{num_examples} examples give no full batch of {config.batch_size}; set total_steps")
    logging.info("total_steps = %d (%d epochs x %d steps of %d rows, %.1f examples each)", total,
                 config.num_epochs, steps_per_epoch, config.batch_size, examples_per_step)
    return total


def train(config, workdir: str, fns: Optional[ModelFns] = None) -> TrainResult:
    """Trains (or resumes) the run in `workdir` as `config` says; every process calls this."""
    from momentor_jax.data.loader import make_train_loader  # noqa: PLC0415 (data stack only where training)
    from momentor_jax.training import evals as evals_lib  # noqa: PLC0415 (it builds on this module)
    try:  # everything here is the user's config, files or data: one line naming what is wrong
        model_config = MomentorConfig.from_dict(config.model)
        mesh = sharding.make_mesh(config.mesh)
        check_config(config, model_config, mesh)
        paths = data_paths(config)
        tokenizer = load_tokenizer(paths["tokenizer"], model_config)
        data_config = {"examples": paths["examples"], "frames": paths["frames"],
                       "read_threads": config.data.read_threads, "system_prompt": config.data.system_prompt,
                       "video_cache_mb": config.data.video_cache_mb}
        loader = make_train_loader(
            data_config, tokenizer=tokenizer, num_frames=model_config.num_frames, max_length=config.max_length,
            global_batch_size=config.batch_size, seed=config.seed, process_index=jax.process_index(),
            process_count=jax.process_count(), num_epochs=None, worker_count=config.data.worker_count,
            use_features=config.data.use_features, image_size=model_config.vision.image_size,
            packing=packing_options(config))
        total_steps = resolve_total_steps(config, loader.num_examples, loader.examples_per_row)
        eval_examples = None
        if evals_lib.every_steps(config):
            eval_examples = evals_lib.open_examples(config, paths["frames"], tokenizer, model_config)
        grounding_eval = None
        if evals_lib.grounding_every_steps(config):
            grounding_eval = evals_lib.GroundingEval(config, paths["frames"], tokenizer, model_config, workdir)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        raise StartupError(str(e).strip("'\"") if isinstance(e, KeyError) else str(e)) from e
    init_batch = momentor_lib.example_batch(model_config, 1, config.max_length, videos_per_row=videos_per_row(config))
    return run_loop(config=config, workdir=workdir, fns=fns or momentor_fns(model_config), model_config=model_config,
                    mesh=mesh, data_iterator=loader, total_steps=total_steps, init_batch=init_batch,
                    eval_examples=eval_examples, grounding_eval=grounding_eval)
