"""What the web demo accepts as a video, and the file a browser plays.

    resolve_typed_path(text, allowed_dirs) -> str     the real path (symlinks resolved) of a typed path; InputRefused
                                                      unless it is a file inside one of `allowed_dirs`
    check_size(path, max_bytes)                       InputRefused for an empty, unreadable or too large file
    probe(path) -> VideoInfo                          InputRefused unless PyAV opens it as a video container of a
                                                      known kind and decodes a frame of its video stream
    file_digest(path) -> str                          sha256 of the bytes (the video cache's key)
    browser_copy(path, info, out_dir, digest) -> str  `path` itself when browsers play it (H.264/VP8/VP9/AV1 in MP4
                                                      or WebM), else a silent H.264 MP4 (VP8 WebM without libx264)
                                                      copy in `out_dir`, made once per digest

Only files that PyAV opens as one of VIDEO_FORMATS are read further. A text file is refused before FFmpeg sees
it: FFmpeg's playlist demuxers (HLS, concat, DASH) read other files or URLs named inside a text file, so a text
upload could otherwise make the server open them; PyAV is also told to use the file protocol only. Nothing read
is ever unpickled or executed.
"""
from __future__ import annotations

import dataclasses
import fractions
import hashlib
import os
from typing import Sequence

import av
import numpy as np

# Container demuxers (FFmpeg's names, one part of container.format.name) whose files are read.
VIDEO_FORMATS = frozenset({"mov", "mp4", "m4v", "3gp", "matroska", "webm", "avi", "mpeg", "mpegts", "flv", "ogg",
                           "asf"})
BROWSER_CODECS = frozenset({"h264", "vp8", "vp9", "av1"})
BROWSER_CONTAINERS = {"mp4": {"h264", "vp9", "av1"}, "webm": {"vp8", "vp9", "av1"}}
PREVIEW_MAX_SIDE = 640
_SNIFF_BYTES = 4096
_OPEN_OPTIONS = {"protocol_whitelist": "file"}


class InputRefused(ValueError):
    """Input the page refuses; the message is shown to the user as it is."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    duration: float     # seconds
    codec: str          # FFmpeg's decoder name of the first video stream
    container: str      # FFmpeg's demuxer name ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...)
    width: int
    height: int

    @property
    def playable(self) -> bool:
        """Whether Chromium and Firefox play the file as it is."""
        names = set(self.container.split(","))
        return any(self.codec in codecs for kind, codecs in BROWSER_CONTAINERS.items() if kind in names)


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def resolve_typed_path(text: str, allowed_dirs: Sequence[str]) -> str:
    """The real path of `text`; InputRefused unless it resolves (symlinks followed) to a file inside an allowed dir."""
    text = (text or "").strip()
    if not allowed_dirs:
        raise InputRefused("typed paths are switched off: the server was started without --allowed_dir "
                           "(upload the video instead)")
    if "://" in text:
        raise InputRefused(f"{text}: only local files are read")
    if not os.path.isabs(text):
        raise InputRefused(f"{text}: give an absolute path")
    real = os.path.realpath(text)
    roots = [os.path.realpath(d) for d in allowed_dirs]
    if not any(_inside(real, root) for root in roots):
        raise InputRefused(f"{text}: outside the allowed directories ({', '.join(roots)})")
    if not os.path.isfile(real):
        raise InputRefused(f"{text}: no such file")
    return real


def check_size(path: str, max_bytes: int) -> int:
    """The file's size in bytes; InputRefused when it is empty, unreadable or larger than max_bytes."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass
    except OSError as e:
        raise InputRefused(f"{name}: cannot be read ({e.strerror or e})") from e
    if size == 0:
        raise InputRefused(f"{name}: the file is empty")
    if size > max_bytes:
        raise InputRefused(f"{name}: {size / 2**20:.1f} MiB, over the server's limit of {max_bytes / 2**20:.0f} MiB")
    return size


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a character cut at the end of the sniffed bytes
    return True


def probe(path: str) -> VideoInfo:
    """VideoInfo of a file PyAV opens as a video container (VIDEO_FORMATS) with a decodable video stream."""
    from momentor_jax.data import video  # noqa: PLC0415
    name = os.path.basename(path)
    not_video = f"{name}: not a video file that can be decoded"
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise InputRefused(f"{name}: cannot be read ({e.strerror or e})") from e
    if _looks_like_text(head):
        raise InputRefused(f"{not_video} (it is a text file)")
    try:
        with av.open(path, options=_OPEN_OPTIONS) as container:
            kinds = set(container.format.name.split(","))
            if not kinds & VIDEO_FORMATS:
                raise InputRefused(f"{not_video} (FFmpeg reads it as '{container.format.name}')")
            if not container.streams.video:
                raise InputRefused(f"{name}: no video stream")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise InputRefused(f"{name}: its video stream has no decodable frame")
            codec, container_name = stream.codec_context.name, container.format.name
            width, height = first.width, first.height
        duration = video.probe_duration(path)
    except InputRefused:
        raise
    except (av.FFmpegError, OSError, ValueError, StopIteration, video.VideoDecodeError) as e:
        raise InputRefused(f"{not_video} ({type(e).__name__}: {e})") from e
    if not np.isfinite(duration) or duration <= 0:
        raise InputRefused(f"{name}: the video has no duration")
    return VideoInfo(float(duration), codec, container_name, width, height)


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encoder() -> tuple[str, str]:
    """(codec, container) of the preview: H.264 MP4 when this PyAV encodes it, else VP8 WebM."""
    for name in ("libx264", "h264"):
        try:
            av.codec.Codec(name, "w")
            return name, "mp4"
        except Exception:  # noqa: BLE001 (UnknownCodecError and, in some builds, ValueError)
            continue
    return "libvpx", "webm"


def browser_copy(path: str, info: VideoInfo, out_dir: str, digest: str) -> str:
    """A file browsers play: `path` when it already is one, else a transcoded copy (frame times kept, no audio)."""
    if info.playable:
        return path
    from momentor_jax.data import video  # noqa: PLC0415
    codec, container_format = _encoder()
    out = os.path.join(out_dir, f"{digest}.{container_format}")
    if os.path.exists(out):
        return out
    tmp = f"{out}.tmp-{os.getpid()}"
    time_base = fractions.Fraction(1, 1000)
    try:
        with av.open(tmp, mode="w", format=container_format) as container:
            stream = None
            last_pts = -1
            for seconds, pixels in video.iter_frames(path, max_side=PREVIEW_MAX_SIDE):
                if stream is None:
                    stream = container.add_stream(codec, rate=max(1, round(video.frame_rate(path) or 25)))
                    stream.height, stream.width = (side - side % 2 for side in pixels.shape[:2])
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.time_base = time_base
                    stream.options = ({"preset": "veryfast", "crf": "23"} if "264" in codec
                                      else {"deadline": "realtime", "cpu-used": "8"})
                pts = max(int(round(seconds * 1000)), last_pts + 1)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[: stream.height, : stream.width]),
                                                   format="rgb24")
                frame.pts, frame.time_base, last_pts = pts, time_base, pts
                container.mux(stream.encode(frame))
            if stream is None:
                raise InputRefused(f"{os.path.basename(path)}: its video stream has no decodable frame")
            container.mux(stream.encode(None))
        os.replace(tmp, out)
    except video.VideoDecodeError as e:
        raise InputRefused(f"{os.path.basename(path)}: cannot be decoded for the player ({e})") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
