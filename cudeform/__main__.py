"""``python -m cudeform [--version] [tour|demo|bench] [options]``."""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from cudeform._cli import USAGE_STATUS, UsageError

# Its import says so when a source folder named cudeform shadows the installed package.
importlib.import_module("cudeform.adapters")

COMMANDS = {"tour": "cudeform._tour", "demo": "cudeform._demo", "bench": "cudeform._bench"}
USAGE = "usage: python -m cudeform [--version] [tour|demo|bench] [options]"
HELP = f"""{USAGE}

Commands:
  tour   (the default) deform_conv2d forward and backward on this machine's CPU,
         and on its GPU when there is one, with two checks of the sampling rule
  demo   a plain and a deformable CNN learn shapes of varying scale; prints both
         accuracies and draws the learned sampling points
         (needs the demo extra: pip install 'cudeform[demo]')
  bench  times cudeform against the peers installed here, interleaved

python -m cudeform COMMAND --help lists the options of COMMAND.
python -m cudeform --version prints the version."""


def _run(argv: List[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    if argv and argv[0] == "--version":
        import cudeform

        print(f"cudeform {cudeform.__version__}")
        return 0
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        raise UsageError(f"unknown command {argv[0]!r}; expected tour, demo or bench "
                         "(see python -m cudeform --help)")
    if argv and argv[0] in COMMANDS:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    try:
        return importlib.import_module(COMMANDS["tour"]).main(argv)
    except UsageError as error:
        raise _other_command_hint(argv) or error from None


def _options(command: str) -> set:
    parser = importlib.import_module(COMMANDS[command])._parser()
    return set(parser._option_string_actions)  # every option string it knows


def _other_command_hint(argv: List[str]) -> Optional[UsageError]:
    """With no command named, an option of another command (``--quick`` of bench) is
    what the user meant: the error names that command."""
    given = [word.split("=", 1)[0] for word in argv if word.startswith("--")]
    tour = _options("tour")
    for option in given:
        if option in tour:
            continue
        owners = [name for name in COMMANDS if name != "tour" and option in _options(name)]
        if owners:
            return UsageError(
                f"{option} is an option of {' and '.join(owners)}, not of the tour (the "
                f"default command); try python -m cudeform {owners[0]} {' '.join(argv)}")
    return None


def _command_name(argv: List[str]) -> str:
    named = argv and argv[0] in COMMANDS
    return "python -m cudeform" + (f" {argv[0]}" if named else "")


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command; a usage mistake prints one line to stderr and returns 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    name = _command_name(argv)
    try:
        return _run(argv)
    except UsageError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return USAGE_STATUS
    except KeyboardInterrupt:
        print("python -m cudeform: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
