"""``python -m cudeform``: the command dispatch."""

import pytest

from cudeform.__main__ import main


def test_the_default_command_is_the_tour(capsys):
    assert main(["--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "offset (0, 1) reads the right neighbour: True" in printed
    assert main(["tour", "--device", "cpu"]) == 0


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    for command in ("tour", "demo", "bench"):
        assert f"``{command}``" in printed


def test_an_unknown_option_is_an_argparse_error():
    with pytest.raises(SystemExit) as error:
        main(["--no-such-option"])
    assert error.value.code == 2
