"""yt-dlp downloads against a local HTTP server (127.0.0.1 only) serving synthetic mp4 files."""
import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from momentor_jax.data import download
from momentor_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Handler(http.server.SimpleHTTPRequestHandler):
    requested = []

    def do_GET(self):
        _Handler.requested.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves two synthetic videos; yields (url_template, {id: bytes})."""
    root = tmp_path_factory.mktemp("served")
    files = {}
    for spec in synthetic.sample_videos(seed=21, num_videos=2, min_duration=12, max_duration=12):
        path = root / f"{spec.video_id}.mp4"
        synthetic.write_video(spec, str(path))
        files[spec.video_id] = path.read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{{id}}.mp4", files
    httpd.shutdown()
    httpd.server_close()


def test_read_video_ids_from_json_and_jsonl(tmp_path):
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"AAAAAAAAAAA": {}, "BBBBBBBBBBB": {}}))
    assert download.read_video_ids(str(raw)) == ["AAAAAAAAAAA", "BBBBBBBBBBB"]
    lines = tmp_path / "ids.jsonl"
    lines.write_text('{"id": "CCCCCCCCCCC"}\n\n{"vid": "DDDDDDDDDDD", "query": "x"}\n{"id": "CCCCCCCCCCC"}\n')
    assert download.read_video_ids(str(lines)) == ["CCCCCCCCCCC", "DDDDDDDDDDD"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "CCCCCCCCCCC"}\n{oops\n')
    with pytest.raises(ValueError, match="broken.jsonl: line 2"):
        download.read_video_ids(str(broken))
    assert download.is_valid_id("a-b_c123XYZ") and not download.is_valid_id("short")
    assert not download.is_valid_id("has space!!") and not download.is_valid_id("twelve_chars")


def test_download_skip_and_failure_log(server, tmp_path):
    url_template, files = server
    present, fresh = sorted(files)
    target = tmp_path / "videos"
    target.mkdir()
    (target / f"{present}.mp4").write_bytes(b"already here")  # must not be fetched again
    ids = [present, fresh, "missing0000", "not valid!"]
    _Handler.requested.clear()
    summary = download.download_videos(ids, str(target), workers=2, url_template=url_template, progress=False)

    assert (summary.downloaded, summary.already_done) == (1, 1)
    assert (target / f"{fresh}.mp4").read_bytes() == files[fresh]
    assert (target / f"{present}.mp4").read_bytes() == b"already here"
    assert not any(present in path for path in _Handler.requested)
    assert [v for v, _ in summary.invalid] == ["not valid!"]
    assert [v for v, _ in summary.failed] == ["missing0000"]
    logged = [json.loads(line) for line in open(summary.failures_path)]
    assert {row["id"] for row in logged} == {"missing0000", "not valid!"}
    assert "404" in next(row["reason"] for row in logged if row["id"] == "missing0000")
    assert sorted(os.listdir(target)) == sorted([f"{present}.mp4", f"{fresh}.mp4", download.FAILURES_FILE])
    assert "downloaded 1, already present 1, invalid ids 1, failed 1" in summary.line()


def test_url_template_needs_id(tmp_path):
    with pytest.raises(ValueError, match="url_template"):
        download.download_videos(["AAAAAAAAAAA"], str(tmp_path), url_template="http://127.0.0.1/x.mp4")


def test_command_line(server, tmp_path):
    url_template, files = server
    source = tmp_path / "moment10m.json"
    source.write_text(json.dumps({video_id: {} for video_id in [*files, "gone_000000"]}))
    command = [sys.executable, os.path.join(REPO, "data", "download_videos.py"), "--source_path", str(source),
               "--video_path", str(tmp_path / "videos"), "--workers", "2", "--url_template", url_template]
    first = subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path))
    assert first.returncode == 1, first.stderr
    assert "downloaded 2, already present 0, invalid ids 0, failed 1" in first.stdout
    for video_id, data in files.items():
        assert (tmp_path / "videos" / f"{video_id}.mp4").read_bytes() == data
    logged = [json.loads(line) for line in open(tmp_path / "videos" / download.FAILURES_FILE)]
    assert [row["id"] for row in logged] == ["gone_000000"]

    second = subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path))
    assert "downloaded 0, already present 2, invalid ids 0, failed 1" in second.stdout
