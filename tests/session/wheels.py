"""Install, offline, the wheels of a folder whose distributions this interpreter lacks.

``python -m tests.session.wheels [FOLDER]`` (default ``wheels/``): a wheel whose
distribution is already installed is left alone (the image's versions stay), the others
are installed with ``pip --no-index --no-deps`` (tests/fetch_wheels.sh fetches the
dependencies too). One line per wheel, then a count; exit status 0 unless pip itself is
missing. A wheel that fails to install only makes its tests skip.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import subprocess
import sys


def distribution(wheel):
    """The normalised distribution name of a wheel file name."""
    return re.sub(r"[-_.]+", "-", pathlib.Path(wheel).name.split("-")[0]).lower()


def installed_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip_install(wheels):
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
               "--disable-pip-version-check", *map(str, wheels)]
    return subprocess.run(command, capture_output=True, text=True)


def install_missing(folder):
    """``{wheel name: what happened}`` for every wheel in ``folder``."""
    wheels = sorted(pathlib.Path(folder).glob("*.whl"))
    outcome, missing = {}, []
    for wheel in wheels:
        version = installed_version(distribution(wheel))
        if version is None:
            missing.append(wheel)
        else:
            outcome[wheel.name] = f"present ({version})"
    if missing and _pip_install(missing).returncode != 0:
        for wheel in missing:  # one bad wheel must not keep the others out
            result = _pip_install([wheel])
            outcome[wheel.name] = "installed" if result.returncode == 0 else (
                "FAILED: " + (result.stderr.strip().splitlines() or ["?"])[-1])
    else:
        outcome.update({wheel.name: "installed" for wheel in missing})
    return outcome


def main(argv):
    folder = pathlib.Path(argv[0] if argv else "wheels")
    if not folder.is_dir():
        print(f"wheels: no folder {folder}; nothing to install")
        return 0
    outcome = install_missing(folder)
    for name, what in sorted(outcome.items()):
        print(f"  {name}: {what}")
    counts = {kind: sum(w.startswith(kind) for w in outcome.values())
              for kind in ("installed", "present", "FAILED")}
    print(f"wheels: {counts['installed']} installed, {counts['present']} present, "
          f"{counts['FAILED']} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
