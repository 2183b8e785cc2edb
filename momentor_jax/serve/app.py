"""The web demo's Gradio page: a chat.Engine behind a player, an upload, a typed path, a question box.

    build_app(engine, examples=(), header="") -> gr.Blocks     queued, one request at a time; .launch() it
    launch_settings(...) -> dict                                 the keyword arguments of launch (safe defaults)

Page ids (what the browser test drives): #momentor-upload (file input), #momentor-path (typed path),
#momentor-question, #momentor-ask, #momentor-new, #momentor-examples, #momentor-message (`.momentor-status`, whose
data-request is a new number with every request handled, holding the error of the last one if it failed),
#momentor-player-pane (holding video#momentor-video), #momentor-dialogue (turns, `.momentor-time` links,
`.momentor-window` bars with data-start / data-end in seconds).

Handlers never raise: a refused input (media.InputRefused) is shown as it is in #momentor-message, anything else
as "internal error" with its type and message (the traceback goes to the server's stderr), and the server keeps
serving. A typed path, when given, is used instead of the upload; uploading a file clears the typed path. Changing
the video starts a new dialogue; the player is re-rendered only when the video changes, so asking does not reset
its position.
"""
from __future__ import annotations

import itertools
import os
import sys
import traceback
import urllib.parse
from typing import Sequence

from momentor_jax.serve import chat, media, page

TITLE = "Momentor: ask a video"
QUEUE_SIZE = 64  # requests waiting beyond this are turned away by Gradio ("queue is full")


def file_url(path: str) -> str:
    """The page-relative URL Gradio serves a file at (the file must be an upload or under allowed_paths)."""
    return "gradio_api/file=" + urllib.parse.quote(path, safe="/")


def _player(video: chat.Video) -> str:
    note = "transcoded preview (the model reads the original)" if video.transcoded else ""
    return page.player_html(file_url(video.browser_path), video.name, video.duration, note)


def _dialogue(engine: chat.Engine, video: chat.Video, dialogue: chat.Dialogue) -> str:
    turns = [page.turn_html(i, t.question, t.answer, t.windows, t.times, video.duration,
                            engine.truth(video, t.question)) for i, t in enumerate(dialogue.turns)]
    return page.dialogue_html(turns)


def _failure(error: Exception) -> str:
    if isinstance(error, media.InputRefused):
        return str(error)
    traceback.print_exception(error, file=sys.stderr)
    return f"internal error ({type(error).__name__}: {error}); the server keeps serving"


def quiet_gradio() -> None:
    """No telemetry, update check or Hugging Face hub access; call before gradio is first imported."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def build_app(engine: chat.Engine, examples: Sequence[tuple] = (), header: str = ""):
    quiet_gradio()
    import gradio as gr  # noqa: PLC0415

    requests = itertools.count(1)

    def status(error: str = "") -> str:
        return page.status_html(next(requests), error)

    def show_video(upload, typed, state):
        """Opens the video (decoded and encoded now, so that the first question is quick) and shows it."""
        video, dialogue = state
        try:
            opened = engine.open_video(upload, typed)
        except Exception as e:  # noqa: BLE001 (every failure becomes a message in the page)
            return gr.skip(), gr.skip(), status(_failure(e)), state
        if video is not None and opened.key == video.key:
            return gr.skip(), gr.skip(), status(), (opened, dialogue)
        return _player(opened), page.dialogue_html([]), status(), (opened, chat.Dialogue(opened.key))

    def ask(upload, typed, question, state):
        video, dialogue = state
        try:
            if not (question or "").strip():
                raise media.InputRefused("the question is empty: type a question about the video")
            opened = engine.open_video(upload, typed)
            changed = video is None or opened.key != video.key
            dialogue = engine.ask(opened, question, None if changed else dialogue)
        except Exception as e:  # noqa: BLE001
            return gr.skip(), gr.skip(), status(_failure(e)), state, gr.skip()
        player = _player(opened) if changed else gr.skip()
        return player, _dialogue(engine, opened, dialogue), status(), (opened, dialogue), ""

    def new_dialogue(state):
        video, _ = state
        return page.dialogue_html([]), status(), (video, chat.Dialogue(video.key if video else None))

    typed_paths = bool(engine.allowed_dirs)
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 6 * 3600)) as app:
        state = gr.State((None, chat.Dialogue()))
        gr.Markdown(f"## {TITLE}\n{header}")
        with gr.Row():
            with gr.Column(scale=5):
                player = gr.HTML(page.player_html(None), elem_id="momentor-player-pane", js_on_load=page.SEEK_JS)
                upload = gr.File(label="Upload a video", type="filepath", elem_id="momentor-upload")
                typed = gr.Textbox(
                    label="or a video path on this server" + ("" if typed_paths else " (off: no --allowed_dir)"),
                    placeholder=(f"a file under {', '.join(engine.allowed_dirs)}" if typed_paths
                                 else "start the server with --allowed_dir DIR to allow typed paths"),
                    interactive=typed_paths, elem_id="momentor-path")
            with gr.Column(scale=6):
                dialogue = gr.HTML(page.dialogue_html([]), elem_id="momentor-dialogue", js_on_load=page.SEEK_JS,
                                   autoscroll=True)
                message = gr.HTML(page.status_html(0), elem_id="momentor-message", js_on_load=None)
                question = gr.Textbox(label="Question", placeholder="When does the red circle appear?",
                                      elem_id="momentor-question", lines=1)
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="momentor-ask")
                    new_button = gr.Button("New dialogue", elem_id="momentor-new")
        if examples:
            gr.Examples([[path, q] for path, q in examples], inputs=[typed, question], elem_id="momentor-examples",
                        label="Held-out videos (annotated: the timeline shows the ground truth)")

        # Every listener that reaches the model shares one queue slot: one request runs at a time.
        one_at_a_time = dict(concurrency_limit=1, concurrency_id="momentor")
        upload.upload(lambda: "", outputs=typed, queue=False).then(
            show_video, [upload, typed, state], [player, dialogue, message, state], **one_at_a_time)
        typed.submit(show_video, [upload, typed, state], [player, dialogue, message, state], **one_at_a_time)
        for trigger in (ask_button.click, question.submit):
            trigger(ask, [upload, typed, question, state], [player, dialogue, message, state, question],
                    **one_at_a_time)
        new_button.click(new_dialogue, [state], [dialogue, message, state])
    return app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)


def launch_settings(host: str, port: int, max_upload_bytes: int, allowed_paths: Sequence[str]) -> dict:
    """launch() arguments: no share link, bound to `host`, the upload limit, no API page, MCP, PWA or monitoring."""
    return dict(server_name=host, server_port=port, share=False, max_file_size=int(max_upload_bytes),
                allowed_paths=list(allowed_paths), ssr_mode=False, mcp_server=False, pwa=False,
                enable_monitoring=False, inbrowser=False, footer_links=[], show_error=False, css=page.CSS,
                prevent_thread_lock=True, quiet=True)
