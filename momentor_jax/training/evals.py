"""Evaluation during training: held-out loss and temporal accuracy every `config.evals.every_steps` steps.

config.evals (configs/__init__.py): every_steps (0: off), examples (JSONL path(s) or globs, comma-separated,
relative to data.dir unless absolute or gs://), max_examples (the first that many examples with a video),
batch_size (global rows per evaluation batch; 0: batch_size / grad_accum_steps).

The examples come through the loader's deterministic held-out pass (data/loader.EvalExamples: file order, every
example once, this process's slice), their videos from the training frame shards, encoded as training encodes them.
Global batches of evals.batch_size rows (one dialogue per row, also when training packs rows: the model reads the
layout from the frames' rank) are sharded over (data, fsdp) like the train step's; each process fills its
last batches with copies of a loaded example whose loss_mask is zero, so all processes run the same number of
batches and the copies weigh nothing. The jitted step measures with trainer.token_sums (the train step's own loss
terms) on the state's current parameters with a fixed dropout key; it reads the state and nothing else, so training
is the same with and without evaluation.

Results: `loss` = supervised-token mean over all the examples, `temporal_acc` = the train step's temporal accuracy
over all temporal target tokens, `examples` = rows evaluated (TensorBoard: eval/loss, eval/temporal_acc).

Grounding (`GroundingEval`) every evals.grounding_every_steps steps (0: off): R1@0.5 and mIoU (percent) on the first
evals.grounding_max_queries queries of evals.grounding_annotations (any grounding format evaluation/annotations.py
reads; relative to data.dir unless absolute or gs://), videos from the training frame shards, answered by the
state's current parameters in memory with greedy decoding of at most evals.max_new_tokens tokens, through the code
`python -m momentor_jax.evaluate` runs (evaluate.VideoSource, whose records come through data/video_input.py as the
training loader's do, and evaluate.answer_and_score). TensorBoard: eval/R1_0.5 (tags allow no '@'), eval/mIoU.
Process 0 writes what `evaluate --out` writes to WORKDIR/eval_grounding/<step>/: predictions.jsonl, answers.jsonl
and metrics.json (its `checkpoint` is WORKDIR/checkpoints/<step>, saved only when the step is a checkpoint step).
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from momentor_jax import fileio
from momentor_jax.constants import BATCH_KEYS
from momentor_jax.models import partition
from momentor_jax.training import sharding
from momentor_jax.training import trainer as trainer_lib


def every_steps(config) -> int:
    """config.evals.every_steps, 0 for a config without an `evals` section."""
    evals = config.get("evals")
    return int(evals.get("every_steps", 0)) if evals is not None else 0


def grounding_every_steps(config) -> int:
    evals = config.get("evals")
    return int(evals.get("grounding_every_steps", 0)) if evals is not None else 0


def eval_batch_size(config) -> int:
    return int(config.evals.batch_size) or config.batch_size // max(config.grad_accum_steps, 1)


def check_config(config, mesh) -> None:
    """ValueError naming the config key when config.evals cannot run on this mesh."""
    evals = config.get("evals")
    if evals is None:
        return
    for key, minimum in (("every_steps", 0), ("max_examples", 1), ("batch_size", 0), ("grounding_every_steps", 0),
                         ("grounding_max_queries", 1), ("max_new_tokens", 1)):
        value = evals.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"evals.{key} must be an integer >= {minimum}, got {value!r}")
    if evals.grounding_every_steps and not evals.get("grounding_annotations"):
        raise ValueError("evals.grounding_every_steps > 0 needs evals.grounding_annotations (a grounding file)")
    if not evals.every_steps:
        return
    if not evals.get("examples"):
        raise ValueError("evals.every_steps > 0 needs evals.examples (held-out JSONL path(s))")
    size, dp = eval_batch_size(config), sharding.data_parallel_size(mesh)
    if size % dp or size % jax.process_count():
        raise ValueError(f"evals.batch_size {size} is not divisible by the data-parallel size {dp} "
                         f"(mesh {dict(mesh.shape)}) and {jax.process_count()} processes")


def example_paths(config, key: str = "examples") -> list:
    """config.evals.<key> as a list of paths/globs, relative ones joined to data.dir."""
    paths = []
    for path in str(config.evals[key]).split(","):
        path = path.strip()
        if not path:
            continue
        if not (os.path.isabs(path) or fileio.is_remote(path)):
            if not config.data.dir:
                raise ValueError(f"evals.{key} {path!r} is relative: set data.dir or give an absolute path")
            path = fileio.join(config.data.dir, path)
        paths.append(path)
    if not paths:
        raise ValueError(f"evals.{key} names no file")
    return paths


def open_examples(config, frames, tokenizer, model_config):
    """The held-out pass (data/loader.EvalExamples) over config.evals.examples with training's frames and encoding."""
    from momentor_jax.data.loader import make_eval_examples  # noqa: PLC0415 (data stack only where training)
    data_config = {"examples": example_paths(config), "frames": frames, "read_threads": config.data.read_threads,
                   "system_prompt": config.data.system_prompt}
    examples = make_eval_examples(
        data_config, tokenizer=tokenizer, num_frames=model_config.num_frames, max_length=config.max_length,
        process_index=jax.process_index(), process_count=jax.process_count(), use_features=config.data.use_features,
        image_size=model_config.vision.image_size, max_examples=int(config.evals.max_examples))
    if examples.num_total == 0:
        raise ValueError(f"evals.examples {config.evals.examples}: no example has a frame record in {frames}")
    return examples


def make_eval_step(fns: trainer_lib.ModelFns):
    """(trainable, frozen, batch) -> token sums of loss, temporal accuracy and counts (pure; jit it)."""

    def eval_step(trainable, frozen, batch):
        sums = trainer_lib.token_sums(fns, partition.merge_params(trainable, frozen), batch, jax.random.PRNGKey(0))
        out = {k: sums[k] for k in ("loss", "num_tokens", "num_temporal_tokens", "temporal_accuracy") if k in sums}
        out["num_examples"] = jnp.sum(jnp.any(batch["loss_mask"] > 0, axis=-1)).astype(jnp.float32)
        return out
    return eval_step


class HeldOutEval:
    """Held-out loss and temporal accuracy of a TrainState, sharded on the state factory's mesh."""

    def __init__(self, examples, fns: trainer_lib.ModelFns, factory, batch_size: int, every: int):
        self.examples, self.factory, self.every = examples, factory, every
        self.local_batch = batch_size // jax.process_count()
        per_process = math.ceil(examples.num_total / jax.process_count())
        self.num_batches = max(1, math.ceil(per_process / self.local_batch))
        shardings = factory.shardings
        self._step = jax.jit(make_eval_step(fns),
                             in_shardings=(shardings.trainable, shardings.frozen,
                                           sharding.batch_sharding(factory.mesh)),
                             out_shardings=sharding.replicated(factory.mesh))

    def local_batches(self) -> Iterator[dict]:
        """This process's num_batches numpy batches, the last ones filled with zero-weight copies."""
        rows, template, emitted = [], None, 0
        for element in self.examples:
            row = {k: v for k, v in element.items() if k in BATCH_KEYS}
            template = row if template is None else template
            rows.append(row)
            if len(rows) == self.local_batch:
                yield _stack(rows)
                rows, emitted = [], emitted + 1
        if template is None:
            raise ValueError(f"process {jax.process_index()} has no evaluation example: evals.max_examples "
                             f"({self.examples.num_total} examples) must cover every process")
        filler = dict(template, loss_mask=np.zeros_like(template["loss_mask"]))
        while emitted < self.num_batches:
            rows += [filler] * (self.local_batch - len(rows))
            yield _stack(rows)
            rows, emitted = [], emitted + 1

    def evaluate(self, state) -> dict:
        """{'loss', 'temporal_acc', 'examples'} of `state`'s parameters over the held-out examples."""
        totals: dict = {}
        with self.factory.mesh_context():
            for local in self.local_batches():
                sums = self._step(state.trainable, state.frozen, sharding.global_batch(local, self.factory.mesh))
                for k, v in jax.device_get(sums).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        out = {"loss": totals["loss"] / max(totals["num_tokens"], 1.0), "examples": totals["num_examples"]}
        if "temporal_accuracy" in totals:
            out["temporal_acc"] = totals["temporal_accuracy"] / max(totals["num_temporal_tokens"], 1.0)
        return out

    def maybe_run(self, step: int, state, writer) -> Optional[dict]:
        """Evaluates at multiples of `every`: TensorBoard eval/* and one console line."""
        if step % self.every:
            return None
        started = time.perf_counter()
        logging.info("step %d: evaluating on %d held-out examples ...", step, self.examples.num_total)
        result = self.evaluate(state)
        scalars = {k: v for k, v in result.items() if k != "examples"}
        writer.write_scalars(step, scalars, prefix="eval")
        acc = f" | temporal_acc {result['temporal_acc']:.4f}" if "temporal_acc" in result else ""
        writer.print(f"eval at step {step}: loss {result['loss']:.4f}{acc} | {int(result['examples'])} examples, "
                     f"{time.perf_counter() - started:.1f} s")
        return result


def _stack(rows: list) -> dict:
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


OUT_DIR = "eval_grounding"


class GroundingEval:
    """R1@0.5 and mIoU of a TrainState's parameters on held-out grounding queries (evaluate's code path)."""

    def __init__(self, config, frames, tokenizer, model_config, workdir: Optional[str] = None):
        from momentor_jax import evaluate  # noqa: PLC0415
        from momentor_jax.data import conversation  # noqa: PLC0415
        from momentor_jax.evaluation import tasks  # noqa: PLC0415
        from momentor_jax.inference import generate  # noqa: PLC0415
        [annotations] = example_paths(config, "grounding_annotations")
        self.every = grounding_every_steps(config)
        self.task = tasks.make_task("grounding", annotations)
        self.queries = self.task.queries[:int(config.evals.grounding_max_queries)]
        self.source = evaluate.VideoSource(model_config, frames_dir=frames)
        self.source.check([q.vid for q in self.queries])
        self.workdir = workdir  # None: nothing written
        self.model_config, self.tokenizer = model_config, tokenizer
        self.system_prompt = config.data.system_prompt or conversation.SYSTEM_PROMPT
        self.sampling = generate.SamplingConfig(max_new_tokens=int(config.evals.max_new_tokens))
        self.batch_size = eval_batch_size(config)

    def out_dir(self, step: int) -> Optional[str]:
        """WORKDIR/eval_grounding/<step> (written by process 0), None without a workdir."""
        if self.workdir is None or jax.process_index() != 0:
            return None
        return fileio.join(self.workdir, OUT_DIR, str(step))

    def evaluate(self, params, step: Optional[int] = None) -> dict:
        """The metrics of `params`; with a step, evaluate's files also go to out_dir(step)."""
        from momentor_jax import evaluate  # noqa: PLC0415
        from momentor_jax.inference import generate  # noqa: PLC0415
        generator = generate.Generator(params, self.model_config, self.tokenizer, self.system_prompt, self.sampling)
        out_dir = None if step is None else self.out_dir(step)
        checkpoint = "" if out_dir is None else fileio.join(self.workdir, "checkpoints", str(step))
        return evaluate.answer_and_score(self.task, self.queries, generator, self.source, self.batch_size, out_dir,
                                         checkpoint)

    def maybe_run(self, step: int, state, writer) -> Optional[dict]:
        if step % self.every:
            return None
        started = time.perf_counter()
        logging.info("step %d: grounding evaluation on %d queries ...", step, len(self.queries))
        metrics = self.evaluate(state.params, step)
        # TensorBoard tags allow no '@' (tensorboardX would rewrite it to '_' anyway).
        writer.write_scalars(step, {"R1_0.5": metrics["R1@0.5"], "mIoU": metrics["mIoU"]}, prefix="eval")
        writer.print(f"eval at step {step}: grounding R1@0.5 {metrics['R1@0.5']:.1f} | mIoU {metrics['mIoU']:.1f} | "
                     f"{metrics['num_queries']} queries ({metrics['num_unparsable']} unparsable), "
                     f"{time.perf_counter() - started:.1f} s")
        return metrics
