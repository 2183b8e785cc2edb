r"""A local web demo: upload a video (or type its path), ask, see the answer's moments and jump to them.

    python -m momentor_jax.serve --checkpoint CKPT [--port 7860] [--host 127.0.0.1] [--allowed_dir DIR ...] \
        [--max_upload_mb 200] [--annotations FILE --video_dir DIR] [--num_examples 4] [--cache_videos 8] \
        [--max_new_tokens 128] [--temperature 0] [--top_p 1] [--seed 0] [--system_prompt TEXT]

CKPT: a training workdir (latest step), one of its step directories, or a converted checkpoint (as for predict).
Every time in an answer is a link that seeks the player there; each answer's windows are drawn on a timeline, with
the ground truth when the video is annotated in --annotations (any format `evaluate` reads; a video is known by its
file name without extension), whose videos in --video_dir give the page's examples. Questions about the same video
form one dialogue; its frames are decoded and encoded once (the last --cache_videos videos stay encoded). One
request runs at a time; the others wait in the queue.

Safe by default: the server binds 127.0.0.1 (give --host 0.0.0.0 to serve the network, with care: the page has no
login); no public share link; uploads over --max_upload_mb are refused; a file is read only if PyAV opens it as a
video (text files, FFmpeg playlists included, are refused unread); a typed path must resolve, symlinks followed,
inside an --allowed_dir (typed paths are off without one; --video_dir counts as one), and everything under those
directories can be fetched through the page; nothing is unpickled or executed; Gradio's analytics, update check,
share tunnel, API page, MCP server and server-side rendering are off, so nothing reaches the internet.
Videos a browser cannot play (codecs other than H.264/VP8/VP9/AV1) are shown as a transcoded silent copy.

Exit status: 0 after Ctrl-C or SIGTERM (the server's temporary files, uploads included, are removed); 2 on bad flags
or input (checkpoint, annotations, directories), before the model loads.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time

from absl import flags

from momentor_jax import cli, fileio

FLAGS = flags.FLAGS
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _define_flags() -> None:
    cli.define_answer_flags(sampling=True)
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_integer("port", 7860, "port to serve on")
    flags.DEFINE_string("host", "127.0.0.1", "address to bind (default loopback only; 0.0.0.0 serves the network)")
    flags.DEFINE_multi_string("allowed_dir", [], "local directory whose videos may be typed as paths (repeatable)")
    flags.DEFINE_float("max_upload_mb", 200.0, "largest upload accepted, in MiB (> 0)")
    flags.DEFINE_string("annotations", None, "grounding annotations (.jsonl/.txt/.json as evaluate reads): ground "
                        "truth on the timeline and example questions")
    flags.DEFINE_string("video_dir", None, "directory of the annotated videos (<id>.mp4 ...); default: "
                        "videos/ next to --annotations when it exists")
    flags.DEFINE_integer("num_examples", 4, "example questions shown from annotated videos (>= 0)")
    flags.DEFINE_integer("cache_videos", 8, "videos whose encoded frames stay cached (>= 1)")


def _local_dir(flag: str, path: str) -> str:
    if fileio.is_remote(path):
        raise cli.usage_error(f"--{flag}={path}: must be a local directory (the browser plays local files)")
    if not os.path.isdir(path):
        raise cli.usage_error(f"--{flag}={path}: no such directory")
    return os.path.realpath(path)


def check_flags() -> dict:
    """Everything about the flags that can be checked before the model loads; UsageError (exit 2) otherwise."""
    if not FLAGS.checkpoint:
        raise cli.usage_error("--checkpoint is required")
    if not 0 < FLAGS.port < 65536:
        raise cli.usage_error(f"--port must be in 1..65535, got {FLAGS.port}")
    if not FLAGS.max_upload_mb > 0:
        raise cli.usage_error(f"--max_upload_mb must be > 0, got {FLAGS.max_upload_mb}")
    if FLAGS.num_examples < 0 or FLAGS.cache_videos < 1:
        raise cli.usage_error("--num_examples must be >= 0 and --cache_videos >= 1")
    allowed = [_local_dir("allowed_dir", d) for d in FLAGS.allowed_dir]
    video_dir = FLAGS.video_dir
    if FLAGS.video_dir:
        video_dir = _local_dir("video_dir", FLAGS.video_dir)
    elif FLAGS.annotations and not fileio.is_remote(FLAGS.annotations):
        beside = os.path.join(os.path.dirname(os.path.abspath(FLAGS.annotations)), "videos")
        video_dir = os.path.realpath(beside) if os.path.isdir(beside) else None
    if video_dir and video_dir not in allowed:
        allowed.append(video_dir)
    ground_truth = None
    if FLAGS.annotations:
        from momentor_jax.evaluation.annotations import AnnotationError  # noqa: PLC0415
        from momentor_jax.serve.annotated import GroundTruth  # noqa: PLC0415
        if not fileio.isfile(FLAGS.annotations):
            raise cli.usage_error(f"--annotations={FLAGS.annotations}: no such file")
        try:
            ground_truth = GroundTruth.read(FLAGS.annotations, video_dir)
        except (AnnotationError, OSError) as e:
            raise cli.usage_error(f"--annotations: {e}") from None
    return {"allowed": allowed, "ground_truth": ground_truth}


def main(argv) -> None:
    if len(argv) > 1:
        raise cli.usage_error(f"unexpected arguments: {argv[1:]}")
    checked = check_flags()
    from momentor_jax import predict  # noqa: PLC0415
    from momentor_jax.inference import generate  # noqa: PLC0415
    try:
        sampling = generate.SamplingConfig(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                                           top_p=FLAGS.top_p)
    except ValueError as e:
        raise cli.usage_error(f"--{e}") from None
    try:
        predictor = predict.Predictor(FLAGS.checkpoint, sampling, FLAGS.seed, FLAGS.system_prompt)
    except (ValueError, FileNotFoundError) as e:
        raise cli.usage_error(f"--checkpoint: {e}") from None
    if predictor.config.use_cached_features:
        raise cli.usage_error("--checkpoint reads cached ViT features (use_cached_features=True); the demo needs a "
                              "model with its vision tower")

    work_dir = tempfile.mkdtemp(prefix="momentor_serve_")
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(work_dir, "uploads"))
    previews = os.path.join(work_dir, "previews")
    os.makedirs(previews)
    try:
        serve(predictor, checked, previews)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def serve(predictor, checked: dict, previews: str) -> None:
    from momentor_jax.serve import app as app_lib  # noqa: PLC0415
    from momentor_jax.serve import chat  # noqa: PLC0415

    predictor.generator  # noqa: B018 (loads the parameters now, with progress lines, not on the first question)
    ground_truth = checked["ground_truth"]
    engine = chat.Engine(predictor, previews, int(FLAGS.max_upload_mb * 2**20), checked["allowed"],
                         FLAGS.cache_videos, ground_truth, upload_dir=os.environ["GRADIO_TEMP_DIR"])
    examples = ground_truth.examples(FLAGS.num_examples) if ground_truth else []
    header = f"Checkpoint `{predictor.located.params_dir}`."
    if ground_truth:
        header += f" Ground truth from `{ground_truth.source}` ({len(ground_truth)} queries)."
    app = app_lib.build_app(engine, examples, header)
    host = FLAGS.host
    if host not in LOOPBACK:
        cli.progress(f"warning: serving on {host}: anyone who can reach this address can use the page "
                     f"(and fetch files under {', '.join(checked['allowed']) or 'no --allowed_dir'})")
    app.launch(**app_lib.launch_settings(host, FLAGS.port, int(FLAGS.max_upload_mb * 2**20),
                                         [*checked["allowed"], previews]))
    # SIGTERM (a service manager, `kill`) stops the server like Ctrl-C, so its temporary files are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {predictor.checkpoint} at http://{shown}:{FLAGS.port} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        print("stopped", file=sys.stderr, flush=True)
    finally:
        app.close()


if __name__ == "__main__":
    cli.cpu_decode_flags()  # before JAX starts, as predict
    _define_flags()
    cli.run(main)
