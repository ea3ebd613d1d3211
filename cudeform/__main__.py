"""``python -m cudeform [tour|demo|bench] [options]``.

- ``tour`` (the default): deform_conv2d forward and backward on this machine's CPU,
  and on its GPU when there is one, with two checks of the sampling rule.
- ``demo``: a plain and a deformable CNN learn shapes of varying scale; prints both
  accuracies and draws the learned sampling points (needs torch, tqdm, matplotlib).
- ``bench``: times cudeform against the peers installed here, interleaved.

``python -m cudeform COMMAND --help`` lists each command's options.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"tour": "cudeform._tour", "demo": "cudeform._demo", "bench": "cudeform._bench"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "tour"
    return importlib.import_module(COMMANDS[command]).main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
