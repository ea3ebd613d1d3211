"""Make the source checkout importable as if installed, without pip or setuptools.

Writes a meta-path finder into a site-packages folder, with a ``.pth`` file that loads
it at start-up, mapping every package of setup.cfg's ``packages`` to its folder as
``package_dir`` says (``cudeform.adapters`` -> ``adapters/``). This is what an editable
install does; the GPU session falls back to it when ``pip install -e .`` fails offline.
PYTHONPATH alone cannot do it: it has no way to map ``cudeform.adapters``.

``python -m tests.session.source_install [SITE_DIR]`` (default: this interpreter's
purelib folder); prints the files it wrote.
"""

from __future__ import annotations

import configparser
import os
import pathlib
import site
import sys
import sysconfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = "_cudeform_source_finder"

_FINDER = '''"""Maps cudeform's packages to the source checkout (tests/session/source_install.py)."""
import importlib.machinery
import importlib.util
import os
import sys

FOLDERS = {folders!r}


class SourceFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        folder = FOLDERS.get(name)
        if folder is None:
            return None
        init = os.path.join(folder, "__init__.py")
        if os.path.isfile(init):
            return importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[folder])
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [folder]
        return spec


if not any(getattr(f, "FOLDERS", None) is FOLDERS for f in sys.meta_path):
    sys.meta_path.insert(0, SourceFinder)
'''


def package_folders(root=ROOT):
    """``{package: folder}`` for every package of ``root``'s setup.cfg."""
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    options = config["options"]
    packages = options["packages"].split()
    mapping = dict(line.split("=", 1) for line in options.get("package_dir", "").splitlines()
                   if "=" in line)
    mapping = {name.strip(): folder.strip() for name, folder in mapping.items()}
    folders = {}
    for package in sorted(packages, key=len):
        if package in mapping:
            folders[package] = root / mapping[package]
            continue
        parent, _, leaf = package.rpartition(".")
        folders[package] = folders[parent] / leaf if parent in folders else root / package
    return {name: str(folder) for name, folder in folders.items()}


def install(site_dir, root=ROOT):
    """Write the finder and its ``.pth`` into ``site_dir``; return both paths."""
    site_dir = pathlib.Path(site_dir)
    finder = site_dir / f"{MODULE}.py"
    finder.write_text(_FINDER.format(folders=package_folders(root)))
    pth = site_dir / "cudeform-source.pth"
    pth.write_text(f"import {MODULE}\n")
    return finder, pth


def default_site_dir():
    """This interpreter's purelib folder, or the user's site folder when that is not
    writable (both are read at start-up with their ``.pth`` files)."""
    purelib = pathlib.Path(sysconfig.get_paths()["purelib"])
    if os.access(purelib, os.W_OK):
        return purelib
    user = pathlib.Path(site.getusersitepackages())
    user.mkdir(parents=True, exist_ok=True)
    return user


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else default_site_dir()
    for path in install(target):
        print(f"wrote {path}")
