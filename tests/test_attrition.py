"""Failure reasons from the messages yt-dlp and the decoder give, and the failure-log formats."""
import json

import pytest

from momentor_jax.data import attrition

DOWNLOAD_MESSAGES = {
    "[youtube] AAAAAAAAAAA: Video unavailable. This video is no longer available because the YouTube account "
    "associated with this video has been terminated.": "unavailable",
    "[youtube] AAAAAAAAAAA: Video unavailable. This video has been removed by the uploader": "unavailable",
    "[generic] AAAAAAAAAAA: Unable to download webpage: HTTP Error 404: Not Found (caused by <HTTPError 404>)":
        "unavailable",
    "[youtube] AAAAAAAAAAA: Private video. Sign in if you've been granted access to this video": "private",
    "[youtube] AAAAAAAAAAA: Sign in to confirm your age. This video may be inappropriate for some users.": "private",
    "[youtube] AAAAAAAAAAA: Join this channel to get access to members-only content like this video, and other "
    "exclusive perks.": "private",
    "[youtube] AAAAAAAAAAA: Sign in to confirm you're not a bot. Use --cookies-from-browser": "blocked",
    "unable to download video data: HTTP Error 403: Forbidden": "blocked",
    "[generic] AAAAAAAAAAA: Unable to download webpage: HTTP Error 503: Service Unavailable": "network error",
    "HTTP Error 429: Too Many Requests": "network error",
    "Unable to download webpage: <urlopen error timed out>": "network error",
    "Requested format is not available. Use --list-formats for a list of available formats": "unavailable",
    "invalid YouTube id (want 11 characters of [A-Za-z0-9_-])": "invalid id",
    "postprocessing: ffprobe and ffmpeg not found": "download error",
}
FRAME_MESSAGES = {
    "VideoDecodeError: v.mp4: InvalidDataError: [Errno 1094995529] Invalid data found when processing input":
        "corrupt",
    "VideoDecodeError: v.mp4: no video stream": "corrupt",
    "VideoDecodeError: v.mp4: decodable frames end at 3.00s of a 400.00s video (truncated file?)": "corrupt",
    "VideoDecodeError: v.mp4: bad duration 0.0": "too short",
    "worker process crashed while decoding": "decode error",
}


@pytest.mark.parametrize("message,reason", DOWNLOAD_MESSAGES.items())
def test_download_reasons(message, reason):
    assert attrition.classify("download", message) == reason
    assert attrition.is_transient(message) == (reason == "network error")


@pytest.mark.parametrize("message,reason", FRAME_MESSAGES.items())
def test_frame_reasons(message, reason):
    assert attrition.classify("frames", message) == reason


def test_failure_logs_of_both_modes_read_as_rows(tmp_path):
    single = tmp_path / "extract_failures.jsonl"  # the single-machine extractor's log
    single.write_text(json.dumps({"video_id": "AAAAAAAAAAA", "path": "v/AAAAAAAAAAA.mp4",
                                  "reason": "VideoDecodeError: v.mp4: no video stream"}) + "\n")
    downloads = tmp_path / "download_failures.jsonl"  # the single-machine downloader's log
    downloads.write_text(json.dumps({"id": "BBBBBBBBBBB", "reason": "HTTP Error 404: Not Found"}) + "\n\n")
    assert attrition.read_failures(str(single)) == [
        {"video_id": "AAAAAAAAAAA", "stage": "frames", "reason": "corrupt",
         "detail": "VideoDecodeError: v.mp4: no video stream"}]
    assert [r["reason"] for r in attrition.read_failures(str(downloads))] == ["unavailable"]
    summary = attrition.summarize("frames", 5, 1, 3, attrition.read_failures(str(single)))
    failures, _ = attrition.write_report(str(tmp_path), summary, attrition.read_failures(str(single)))
    assert attrition.read_failures(failures) == attrition.read_failures(str(single))
    assert attrition.read_summary(str(tmp_path), "frames") == summary
    broken = tmp_path / "frames_failures.jsonl"
    broken.write_text('{"video_id": "x"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="frames_failures.jsonl: line 2"):
        attrition.read_failures(str(broken))
    with pytest.raises(ValueError, match="unknown stage"):
        attrition.classify("upload", "x")
