"""``python -m cudeform``: the command dispatch, and one-line errors for every mistake."""

import importlib.util

import pytest

import cudeform
from cudeform import _cli
from cudeform.__main__ import main


def _skip_without_demo_packages():
    """The demo checks for its packages before its other settings."""
    missing = [name for name in ("torch", "tqdm", "matplotlib")
               if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the demo reports its missing packages first: {', '.join(missing)}")


def _one_line_error(capsys, argv):
    """Run ``argv``; it must return 2 and print exactly one line, on stderr."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_the_default_command_is_the_tour(capsys):
    assert main(["--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "offset (0, 1) reads the right neighbour: True" in printed
    assert main(["tour", "--device", "cpu"]) == 0


def test_help_lists_the_commands_in_plain_text(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: python -m cudeform [--version] [tour|demo|bench]")
    for command in ("tour", "demo", "bench"):
        assert f"\n  {command} " in printed
    assert "``" not in printed


@pytest.mark.parametrize("command", ["tour", "demo"])
def test_command_help_is_plain_text_with_defaults(capsys, command):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "``" not in printed and "(default: auto)" in printed
    if command == "demo":
        for default in ("(default: 400)", "(default: 32)", "(default: 0)", "(default: 1000)",
                        "cudeform_demo.png)"):
            assert default in printed


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cudeform {cudeform.__version__}"


def test_an_unknown_command_names_the_commands(capsys):
    line = _one_line_error(capsys, ["foo"])
    assert line.startswith("python -m cudeform: error: unknown command 'foo'")
    assert "tour, demo or bench" in line


def test_an_unknown_option_is_one_line(capsys):
    line = _one_line_error(capsys, ["--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in line


@pytest.mark.parametrize("argv, expected", [
    (["demo", "--steps", "0"], "--steps: expected an int >= 1, got '0'"),
    (["demo", "--test-size", "3"], "--test-size: expected an int >= 4, got '3'"),
    (["demo", "--out", "/no/such/folder/demo.png"],
     "--out /no/such/folder/demo.png: cannot write it (No such file or directory)"),
    (["demo", "--out", "/"], "--out /: cannot write it (Is a directory)"),
    (["tour", "--device", "gpu"], "invalid choice: 'gpu'"),
])
def test_bad_arguments_are_one_line(capsys, argv, expected):
    # e.g. "python -m cudeform demo: error: argument --steps: expected ..."
    if "--out" in argv:
        _skip_without_demo_packages()
    assert expected in _one_line_error(capsys, argv)


@pytest.mark.skipif(_cli.why_no_cuda() is None, reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["tour", "demo", "bench"])
def test_device_cuda_without_a_gpu_says_so(capsys, command):
    if command == "demo":
        _skip_without_demo_packages()
    line = _one_line_error(capsys, [command, "--device", "cuda"])
    assert line.startswith(f"python -m cudeform {command}: error: --device cuda: no GPU to run "
                           "on: ")


def test_demo_without_torch_names_the_install_command(capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name in ("torch", "tqdm", "matplotlib") else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    line = _one_line_error(capsys, ["demo", "--steps", "1"])
    assert line.startswith("python -m cudeform demo: error: the demo needs torch, tqdm and "
                           "matplotlib; not installed: torch, tqdm, matplotlib.")
    assert "pip install 'cudeform[demo]'" in line


@pytest.mark.parametrize("command", ["tour", "demo", "bench"])
def test_a_bad_environment_setting_is_one_line(capsys, monkeypatch, command):
    monkeypatch.setenv("CUDEFORM_DETERMINISTIC", "yes")
    line = _one_line_error(capsys, [command, "--device", "cpu"])
    assert line == (f"python -m cudeform {command}: error: CUDEFORM_DETERMINISTIC is not valid: "
                    "expected 0 or 1, got 'yes'")
