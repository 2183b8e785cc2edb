"""Help texts and usage errors of the command-line tools, read the way a user meets them."""
import argparse
import ast
import importlib.util
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _python_files():
    for folder in ("configs", "data", "launch", "momentor_jax"):
        yield from sorted((REPO / folder).glob("**/*.py"))


def test_no_docstring_collapses_a_shell_continuation():
    """A backslash-newline inside a plain string literal joins the lines: the usage shows one run-on line."""
    collapsed = []
    for path in _python_files():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literal = ast.get_source_segment(source, node) or ""
                if not literal[:2].lower().startswith("r") and "\\\n" in literal:
                    collapsed.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not collapsed, collapsed


def _load(relative):
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["data/convert_data.py", "data/convert_data_gesm.py", "launch/tpu.py",
                                    "launch/sweep.py"])
def test_usage_lines_keep_their_continuations(script, capsys):
    module = _load(script)
    with pytest.raises(SystemExit) as info:
        (module.main if hasattr(module, "main") else module.build_parser().parse_args)(["--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    continued = [line for line in module.__doc__.splitlines() if line.rstrip().endswith("\\")]
    assert continued and all(line in shown for line in continued)


def test_convert_help_describes_every_argument():
    from momentor_jax.convert.__main__ import _parser
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        for action in parser._actions:
            assert action.help, f"convert {name} {action.option_strings}: no help"
    assert "training workdir" in commands.choices["export_hf"].format_help()


def test_extract_frames_bad_usage_exits_2(tmp_path, capsys):
    extract_frames = _load("data/extract_frames.py")
    videos = tmp_path / "videos"
    videos.mkdir()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert extract_frames.main(["--video_dir", str(videos), "--out_dir", str(not_a_dir)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert extract_frames.main(["--video_dir", str(videos), "--out_dir", str(tmp_path / "o"), "--num_frames",
                                "0"]) == 2
    assert extract_frames.main(["--video_dir", str(tmp_path / "absent"), "--out_dir", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit) as info:
        extract_frames.main(["--video_dir", str(videos)])
    assert info.value.code == 2
    assert os.listdir(tmp_path) == sorted(os.listdir(tmp_path))  # nothing raised past main
