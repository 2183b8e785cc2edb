"""The web demo (python -m momentor_jax.serve) in a real headless browser, plus its parts without one.

Browser tests drive Debian's chromium through its chromedriver (selenium; nothing is downloaded) and skip, saying
why, only when those two programs are absent. Two servers:
- `scripted`: the demo's page and back end in this process with the model replaced by ScriptedGenerator, which
  answers every question with the same two temporal tokens (through the real render_answer, parser and page). A
  tiny random model rarely joins its times into a window, so this is what makes the grounding checks deterministic;
  it checks the page, not the model.
- `real`: the real command (`python -m momentor_jax.serve`) on a tiny random checkpoint, end to end: upload, ask,
  the model's own answer in the page, its times seeking the player.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_checkpoints

from momentor_jax.data import synthetic
from momentor_jax.data import tokenizer as tokenizer_lib
from momentor_jax.data.encode import build_prompt
from momentor_jax.evaluation import parsing
from momentor_jax.evaluation.tasks import grounding_question
from momentor_jax.inference import generate
from momentor_jax.models import config as model_configs
from momentor_jax.serve import annotated, chat, media, page

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README shows this test's screenshot: MOMENTOR_UPDATE_SCREENSHOT=1 writes it there, other runs to a temporary
# folder (a test run leaves the tree as it was).
SCREENSHOT = os.path.join(REPO, "docs", "serve_screenshot.png")
SYSTEM_PROMPT = "You are Momentor."
MAX_NEW_TOKENS = 12
SCRIPTED_TIMES = (0.25, 0.6)  # normalized: the scripted answer's window is [0.25, 0.6] of every video
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Synthetic videos (the last two held out, with grounding annotations), a tokenizer, a converted tiny random
    checkpoint (temporal output table scaled up so that it writes times), an allowed directory with a video and a
    symlink that leads out of it, a video outside it, a text file named like a video, an MPEG-4 Part 2 video."""
    root = tmp_path_factory.mktemp("serve")
    raw = str(root / "raw")
    synthetic.make_dataset(raw, 3, seed=3, num_heldout=2, min_duration=8, max_duration=10, progress=False)
    config = model_configs.tiny()
    model_path = tokenizer_lib.train_sentencepiece(synthetic.tokenizer_texts(200), str(root / "sp"),
                                                   vocab_size=config.llm.vocab_size - 5)
    tokenizer = tokenizer_lib.MomentorTokenizer(model_path, config.num_temporal_tokens)
    converted = str(root / "converted")
    tiny_checkpoints.save_writing_times(converted, config, tokenizer)

    queries = [json.loads(line) for line in open(os.path.join(raw, "grounding_heldout.jsonl"))]
    videos = {q["vid"]: os.path.join(raw, "videos", q["vid"] + ".mp4") for q in queries}
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    train_video = next(os.path.join(raw, "videos", vid + ".mp4") for vid in synthetic.load_specs(raw)
                       if vid not in videos)  # not annotated, and not the content of any video uploaded
    shutil.copy(train_video, allowed / "clip.mp4")
    shutil.copy(train_video, outside / "secret.mp4")
    os.symlink(outside / "secret.mp4", allowed / "link.mp4")
    (root / "notes.mp4").write_text("these are notes, not a video\n" * 20)
    spec = synthetic.load_specs(raw)[queries[0]["vid"]]
    synthetic.write_video(spec, str(root / "mpeg4.mp4"), codec="mpeg4")
    return {"root": root, "raw": raw, "converted": converted, "config": config, "tokenizer": tokenizer,
            "queries": queries, "videos": videos, "allowed": str(allowed), "outside": str(outside),
            "annotations": os.path.join(raw, "grounding_heldout.jsonl")}


class ScriptedGenerator:
    """Stands in for the model (see the module docstring): encode gives zeros, every answer is "It appears from
    <TEMP> to <TEMP>." with the temporal tokens at SCRIPTED_TIMES of the video, rendered by generate.render_answer.
    Records every prompt it is given."""

    def __init__(self, tokenizer, config):
        self.tokenizer, self.config, self.prompts, self.encoded = tokenizer, config, [], 0
        self.delay, self.events = 0.0, []  # seconds each answer takes; ("answered", time) per answer

    def encode(self, frames):
        self.encoded += 1
        return np.zeros((len(frames), self.config.num_frames, self.config.llm.hidden_size), np.float32)

    def answer_prompts(self, prompts, video_embeds, durations):
        self.prompts.extend(prompts)
        tok, n = self.tokenizer, self.tokenizer.num_temporal_tokens
        ids = tok.encode("It appears from <TEMP-OUTPUT> to <TEMP-OUTPUT>.", add_bos=False) + [tok.eos_id]
        times = [0.0] * len(ids)
        slots = [i for i, t in enumerate(ids) if t == tok.temp_output_id]
        for slot, p in zip(slots, SCRIPTED_TIMES, strict=True):  # the temporal token V + k the model would write
            ids[slot], times[slot] = tok.vocab_size + round(p * (n - 1)), p
        time.sleep(self.delay)
        self.events.append(("answered", time.monotonic()))
        return [generate.render_answer(ids, times, d, tok) for d in durations]


def _predictor(tiny):
    from momentor_jax import predict
    return predict.Predictor(tiny["converted"], generate.SamplingConfig(max_new_tokens=MAX_NEW_TOKENS),
                             system_prompt=SYSTEM_PROMPT, progress=False)


def _engine(tiny, tmp_path, generator, upload_dir=None):
    previews = tmp_path / "previews"
    previews.mkdir(exist_ok=True)
    truth = annotated.GroundTruth.read(tiny["annotations"], os.path.join(tiny["raw"], "videos"))
    # The annotated videos' directory is allowed, as the command allows its --video_dir.
    return chat.Engine(_predictor(tiny), str(previews), 1 << 20, [tiny["allowed"], truth.video_dir], cache_videos=2,
                       ground_truth=truth, generator=generator, progress=False, upload_dir=upload_dir)


# ------------------------------------------------------------------------------------------------ without a browser
def test_typed_paths_must_resolve_inside_an_allowed_dir(tiny):
    allowed = [tiny["allowed"]]
    assert media.resolve_typed_path(os.path.join(tiny["allowed"], "clip.mp4"), allowed) == \
        os.path.realpath(os.path.join(tiny["allowed"], "clip.mp4"))
    refused = {
        os.path.join(tiny["outside"], "secret.mp4"): "outside the allowed directories",
        os.path.join(tiny["allowed"], "link.mp4"): "outside the allowed directories",            # symlink out
        os.path.join(tiny["allowed"], "..", "outside", "secret.mp4"): "outside the allowed directories",
        tiny["allowed"] + "-sibling/x.mp4": "outside the allowed directories",                    # a prefix only
        "clip.mp4": "absolute path",
        "gs://bucket/clip.mp4": "only local files",
        os.path.join(tiny["allowed"], "absent.mp4"): "no such file",
    }
    for path, message in refused.items():
        with pytest.raises(media.InputRefused, match=message):
            media.resolve_typed_path(path, allowed)
    with pytest.raises(media.InputRefused, match="without --allowed_dir"):
        media.resolve_typed_path(os.path.join(tiny["allowed"], "clip.mp4"), [])


def test_only_files_pyav_decodes_as_video_are_read(tiny, tmp_path):
    playlist = tmp_path / "playlist.mp4"  # an HLS playlist naming another file: refused before FFmpeg opens it
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{tiny['videos'][tiny['queries'][0]['vid']]}\n")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for path, message in ((tiny["root"] / "notes.mp4", "text file"), (playlist, "text file"),
                          (noise, "not a video file that can be decoded")):
        with pytest.raises(media.InputRefused, match=message):
            media.probe(str(path))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(media.InputRefused, match="empty"):
        media.check_size(str(empty), 100)
    with pytest.raises(media.InputRefused, match="over the server's limit"):
        media.check_size(tiny["videos"][tiny["queries"][0]["vid"]], 100)

    info = media.probe(tiny["videos"][tiny["queries"][0]["vid"]])
    assert info.duration == pytest.approx(tiny["queries"][0]["duration"], abs=0.2)


def test_a_video_browsers_cannot_play_gets_a_playable_copy(tiny, tmp_path):
    source = str(tiny["root"] / "mpeg4.mp4")
    info = media.probe(source)
    assert info.codec == "mpeg4" and not info.playable
    copy = media.browser_copy(source, info, str(tmp_path), media.file_digest(source))
    copied = media.probe(copy)
    assert copied.playable and copied.duration == pytest.approx(info.duration, abs=0.2)
    playable = tiny["videos"][tiny["queries"][0]["vid"]]
    assert media.browser_copy(playable, media.probe(playable), str(tmp_path), "x") == playable


def test_answer_links_every_time_and_escapes_text():
    html = page.linked_answer("<b>It</b> appears from 2.0s to 5.5s, again at 7 seconds & 30s.", 10.0)
    assert "<b>It</b>" not in html and "&lt;b&gt;It&lt;/b&gt;" in html and "&amp;" in html
    assert [float(v) for v in __import__("re").findall(r'data-seek="([\d.]+)"', html)] == [2.0, 5.5, 7.0, 10.0]
    timeline = page.timeline_html([(2.0, 5.0)], [2.0, 5.0], 10.0, "ground truth: x", [(1.0, 4.0)])
    assert 'left:20.00%;width:30.00%' in timeline and 'left:10.00%;width:30.00%' in timeline


def test_dialogue_prompt_puts_earlier_answers_back_with_temporal_placeholders(tiny, tmp_path):
    scripted = ScriptedGenerator(tiny["tokenizer"], tiny["config"])
    engine = _engine(tiny, tmp_path, scripted)
    query = tiny["queries"][0]
    video = engine.open_video(tiny["videos"][query["vid"]], None)
    first, second = grounding_question(query["query"]), "And when does it end?"
    dialogue = engine.ask(video, first)
    turn = dialogue.turns[0]
    assert turn.reply == "It appears from <TEMP-OUTPUT> to <TEMP-OUTPUT>."
    assert turn.windows == tuple(tuple(w) for w in parsing.parse_windows(turn.answer, video.duration))
    expected = [round(t * video.duration, 1) for t in SCRIPTED_TIMES]
    assert list(turn.reply_times) == expected and list(turn.windows[0]) == expected
    dialogue = engine.ask(video, second, dialogue)
    want = build_prompt([{"User": first, "Assistant": turn.reply}, {"User": second, "Assistant": None}],
                        tiny["tokenizer"], tiny["config"].num_frames, for_generation=True, duration=video.duration,
                        temporal_output_times=expected, system_prompt=SYSTEM_PROMPT)
    np.testing.assert_array_equal(scripted.prompts[-1]["input_ids"], want["input_ids"])
    np.testing.assert_allclose(scripted.prompts[-1]["placeholder_times"], want["placeholder_times"])
    assert len(dialogue.turns) == 2 and scripted.encoded == 1 and engine.stats["videos_encoded"] == 1
    # Another video starts a new dialogue; the truth lane follows the question's annotated query.
    assert engine.truth(video, first)[1] == tuple(tuple(w) for w in query["relevant_windows"])
    with pytest.raises(media.InputRefused, match="question is empty"):
        engine.ask(video, "   ", dialogue)
    uploads_only = _engine(tiny, tmp_path, scripted, upload_dir=str(tmp_path / "uploads"))
    with pytest.raises(media.InputRefused, match="not an upload of this server"):
        uploads_only.open_video(tiny["videos"][query["vid"]], None)
    long_question = " ".join(["word"] * 300)
    with pytest.raises(media.InputRefused, match="does not fit the model's context"):
        engine.ask(video, long_question)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_address():
    """This host's address on its default route (no packet is sent), or None when it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def _run_serve(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "momentor_jax.serve", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_bad_flags_exit_2_in_one_line(tiny, tmp_path):
    bad_annotations = tmp_path / "bad.jsonl"
    bad_annotations.write_text('{"qid": 1, "vid": "x"}\n')
    cases = [
        (["--checkpoint", str(tmp_path / "absent")], "no such directory"),
        (["--checkpoint", tiny["converted"], "--max_upload_mb", "0"], "--max_upload_mb must be > 0"),
        (["--checkpoint", tiny["converted"], "--allowed_dir", str(tmp_path / "absent")], "no such directory"),
        (["--checkpoint", tiny["converted"], "--annotations", str(bad_annotations)], "bad.jsonl, line 1"),
    ]
    for args, message in cases:
        result = _run_serve(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ in a browser
@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver on this host (apt-get install chromium chromium-driver; "
                    "`make install` tries): the web demo's browser tests need a real browser")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--mute-audio"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


class Page:
    """The demo page as a user meets it (ids from momentor_jax/serve/app.py)."""

    def __init__(self, driver, url):
        from selenium.webdriver.common.by import By
        self.d, self.by = driver, By
        driver.get(url)
        self.wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#momentor-ask"), 30)

    def wait(self, condition, timeout=60):
        from selenium.webdriver.support.ui import WebDriverWait
        return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(lambda d: condition())

    def all(self, css):
        return self.d.find_elements(self.by.CSS_SELECTOR, css)

    def upload(self, path):
        if not self.all("#momentor-upload input[type=file]"):
            self.all("#momentor-upload button[aria-label='Clear']")[0].click()
            self.wait(lambda: self.all("#momentor-upload input[type=file]"), 10)
        self.all("#momentor-upload input[type=file]")[0].send_keys(str(path))

    def type(self, css, text):
        box = self.all(css)[0]
        box.clear()
        if text:
            box.send_keys(text)

    def handled(self):
        """The number of the last request the server handled for this page (each one gets a new number)."""
        return int(self.all("#momentor-message .momentor-status")[0].get_attribute("data-request"))

    def error(self):
        errors = self.all("#momentor-message .momentor-error")
        return errors[0].text if errors else None

    def ask(self, question):
        """Asks; returns the error shown, or None when the answer came."""
        before = self.handled()
        self.type("#momentor-question textarea", question)
        self.all("#momentor-ask")[0].click()
        return self.outcome(before)

    def outcome(self, before):
        """Waits for a request after the one numbered `before`; its error or None."""
        self.wait(lambda: self.handled() != before, 90)
        return self.error()

    def player(self):
        return self.d.execute_script(
            "const v = document.getElementById('momentor-video');"
            "return v ? {src: v.currentSrc, ready: v.readyState, duration: v.duration, error: v.error && v.error.code,"
            " time: v.currentTime} : null;")

    def click_and_read_time(self, element):
        self.wait(lambda: (self.player() or {}).get("ready", 0) >= 1, 30)
        element.click()
        self.wait(lambda: not self.d.execute_script("return document.getElementById('momentor-video').seeking"), 10)
        return self.player()["time"]


@pytest.fixture
def scripted(tiny, tmp_path, monkeypatch):
    """The page in this process, answering with ScriptedGenerator (see the module docstring)."""
    from momentor_jax.serve import app as app_lib
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    generator = ScriptedGenerator(tiny["tokenizer"], tiny["config"])
    engine = _engine(tiny, tmp_path, generator, upload_dir=str(tmp_path / "uploads"))
    opened = engine.open_video

    def open_video(*args):  # the first thing a request does with the engine
        generator.events.append(("open", time.monotonic()))
        return opened(*args)

    engine.open_video = open_video
    port = _free_port()
    examples = engine.ground_truth.examples(2)
    demo = app_lib.build_app(engine, examples, "scripted answers (test)")
    demo.launch(**app_lib.launch_settings("127.0.0.1", port, 1 << 20, [*engine.allowed_dirs, engine.work_dir]))
    yield {"url": f"http://127.0.0.1:{port}/", "engine": engine, "generator": generator, "examples": examples}
    demo.close()


def test_grounding_answer_links_seek_the_player_and_the_dialogue_goes_on(tiny, scripted, browser, tmp_path):
    query = tiny["queries"][-1]
    video = tiny["videos"][query["vid"]]
    p = Page(browser, scripted["url"])
    p.upload(video)
    p.wait(lambda: p.all("#momentor-video"), 30)
    assert p.ask(grounding_question(query["query"])) is None

    answer = p.all(".momentor-answer")[0].text
    windows = parsing.parse_windows(answer)
    assert len(windows) == 1, answer
    start, end = windows[0]
    assert 0 <= start < end <= query["duration"]
    assert (start, end) == tuple(round(t * query["duration"], 1) for t in SCRIPTED_TIMES)
    bar = p.all(".momentor-predicted")[0]
    assert (float(bar.get_attribute("data-start")), float(bar.get_attribute("data-end"))) == (start, end)
    truth = p.all(".momentor-truth")
    assert [(float(b.get_attribute("data-start")), float(b.get_attribute("data-end"))) for b in truth] == \
        [tuple(w) for w in query["relevant_windows"]]
    player = p.player()
    assert player["error"] is None and player["duration"] == pytest.approx(query["duration"], abs=0.2)

    links = p.all(".momentor-turn .momentor-time")
    assert [float(link.get_attribute("data-seek")) for link in links] == [start, end]
    for link, target in ((links[1], end), (links[0], start)):
        assert p.click_and_read_time(link) == pytest.approx(target, abs=0.5)
    assert p.click_and_read_time(truth[0]) == pytest.approx(query["relevant_windows"][0][0], abs=0.5)

    # The same video again: one dialogue, the frames encoded once, the first answer in the second prompt.
    assert p.ask("And when does it disappear?") is None
    assert len(p.all(".momentor-turn")) == 2 and scripted["generator"].encoded == 1
    second_prompt = scripted["generator"].prompts[-1]
    assert list(second_prompt["input_ids"]).count(tiny["tokenizer"].temp_output_id) == 2
    # Asking again does not reload the player: it stays where the last click put it.
    assert p.player()["time"] == pytest.approx(query["relevant_windows"][0][0], abs=0.5)

    # The screenshot, with a frame inside the annotated event.
    middle = sum(query["relevant_windows"][0]) / 2
    browser.execute_script(f"document.getElementById('momentor-video').currentTime = {middle}")
    p.wait(lambda: not browser.execute_script("return document.getElementById('momentor-video').seeking"), 10)
    screenshot = SCREENSHOT if os.environ.get("MOMENTOR_UPDATE_SCREENSHOT") else str(tmp_path / "serve.png")
    assert browser.save_screenshot(screenshot) and os.path.getsize(screenshot) > 10_000

    # "New dialogue" forgets the turns: the next prompt holds only the new question.
    before = p.handled()
    p.all("#momentor-new")[0].click()
    p.outcome(before)
    assert not p.all(".momentor-turn")
    assert p.ask("When does the shape appear?") is None and len(p.all(".momentor-turn")) == 1
    assert tiny["tokenizer"].temp_output_id not in list(scripted["generator"].prompts[-1]["input_ids"])
    assert scripted["generator"].encoded == 1

    # Nothing the page loaded came from anywhere but this server.
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(scripted["url"]) for url in loaded), loaded


def test_bad_input_shows_a_message_and_the_server_keeps_serving(tiny, scripted, browser):
    p = Page(browser, scripted["url"])
    before = p.handled()
    p.upload(tiny["root"] / "notes.mp4")
    error = p.outcome(before)
    assert "notes.mp4: not a video file that can be decoded (it is a text file)" in error
    assert p.ask("When does the red circle appear?") is not None  # still the text file: refused again
    query = tiny["queries"][0]
    before = p.handled()
    p.upload(tiny["videos"][query["vid"]])
    assert p.outcome(before) is None and p.all("#momentor-video")
    assert p.ask(grounding_question(query["query"])) is None

    assert "question is empty" in p.ask("")

    big = tiny["root"] / "big.mp4"  # over the fixture's 1 MiB limit: Gradio refuses it in the page and on the server
    big.write_bytes(b"\0" * (2 << 20))
    p.upload(big)
    p.wait(lambda: "exceed the maximum allowed size" in p.d.find_element(p.by.TAG_NAME, "body").text, 20)
    post = ("const form = new FormData(); form.append('files', new Blob([new Uint8Array(arguments[0])]), 'big.mp4');"
            "return fetch('gradio_api/upload', {method: 'POST', body: form}).then(r => r.status)")
    assert p.d.execute_script(post, 2 << 20) == 413
    for path in (os.path.join(tiny["outside"], "secret.mp4"), os.path.join(tiny["allowed"], "link.mp4"), "/etc/passwd"):
        p.type("#momentor-path textarea", path)
        assert "outside the allowed directories" in p.ask("What happens?")
    fetch = "return fetch('gradio_api/file=' + arguments[0]).then(r => r.status)"
    assert p.d.execute_script(fetch, os.path.join(tiny["outside"], "secret.mp4")) == 403  # nor served to the page

    p.type("#momentor-path textarea", os.path.join(tiny["allowed"], "clip.mp4"))
    assert p.ask("What happens?") is None
    assert os.path.join(tiny["allowed"], "clip.mp4") in p.player()["src"]
    p.wait(lambda: p.player()["ready"] >= 1, 30)
    assert p.player()["error"] is None
    # An example (a held-out video with its annotated question) fills the path and the question.
    p.all("#momentor-examples [data-testid='dataset-cell-0-0']")[0].click()
    path, question = scripted["examples"][0]
    p.wait(lambda: p.all("#momentor-path textarea")[0].get_attribute("value") == path, 10)
    assert p.all("#momentor-question textarea")[0].get_attribute("value") == question
    assert p.ask(question) is None
    assert p.all(".momentor-turn .momentor-truth")  # an annotated video: the ground truth is drawn


def test_one_request_runs_at_a_time(tiny, scripted, browser):
    """Two pages ask at once; the second request reaches the engine only after the first one's answer."""
    pages = []
    for query in tiny["queries"][:2]:
        if pages:
            browser.switch_to.new_window("tab")
        p = Page(browser, scripted["url"])
        before = p.handled()
        p.upload(tiny["videos"][query["vid"]])
        assert p.outcome(before) is None
        p.type("#momentor-question textarea", grounding_question(query["query"]))
        pages.append((browser.current_window_handle, p))
    events, scripted["generator"].delay = scripted["generator"].events, 1.5
    events.clear()
    before = {}
    for handle, p in pages:
        browser.switch_to.window(handle)
        before[handle] = p.handled()
        p.all("#momentor-ask")[0].click()
    for handle, p in pages:
        browser.switch_to.window(handle)
        assert p.outcome(before[handle]) is None and len(p.all(".momentor-turn")) == 1
    assert [name for name, _ in events] == ["open", "answered", "open", "answered"]
    assert events[2][1] >= events[1][1]
    browser.close()
    browser.switch_to.window(pages[0][0])


def test_the_real_command_answers_in_the_page(tiny, browser, tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS="")
    server = subprocess.Popen(
        [sys.executable, "-m", "momentor_jax.serve", "--checkpoint", tiny["converted"], "--port", str(port),
         "--max_new_tokens", str(MAX_NEW_TOKENS), "--system_prompt", SYSTEM_PROMPT, "--allowed_dir", tiny["allowed"],
         "--annotations", tiny["annotations"]], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving ") and f"http://127.0.0.1:{port}" in line, (line, server.stderr.read()
                                                                                  if server.poll() is not None else "")
        own_address = _own_address()
        if own_address:  # bound to loopback only: this host's other address does not answer
            with pytest.raises(OSError), socket.create_connection((own_address, port), timeout=5):
                pass
        p = Page(browser, f"http://127.0.0.1:{port}/")
        query = tiny["queries"][0]
        p.upload(tiny["videos"][query["vid"]])
        p.wait(lambda: p.all("#momentor-video"), 60)
        assert p.ask(grounding_question(query["query"])) is None
        answer = p.all(".momentor-answer")[0].text.removeprefix("Momentor:").strip()
        assert answer  # the random model's answer: times, rarely a window (the scripted tests check windows)
        links = p.all(".momentor-turn .momentor-time")
        assert links, answer
        target = float(links[-1].get_attribute("data-seek"))
        assert 0 <= target <= query["duration"]
        assert p.click_and_read_time(links[-1]) == pytest.approx(target, abs=0.5)
        p.type("#momentor-path textarea", "/etc/passwd")
        assert "outside the allowed directories" in p.ask("What happens?")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode == 0, server.stderr.read()[-2000:]
