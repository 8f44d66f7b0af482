"""The installable package ``camexplain``, built from the flat modules at the repository's root.

The repository runs as it is: its modules sit at the root and import each other by bare names
(``import data``, ``from zoo import load_classifier``), which is what ``python main.py``, the
examples and the tests use. Installed like that, they would put generic top-level names
(``data``, ``model``, ``train``, ``outputs``...) on a user's path, where they collide with the
user's own modules. So ``pip install .`` installs one package, ``camexplain``: the build copies
every root module into it and rewrites its imports of the tool's own modules (the root's
``*.py`` files but this one) to the package, import statements only, found with ``ast``:

    import data                 ->  from camexplain import data
    import data as d, torch     ->  import torch; from camexplain import data as d
    from data import X          ->  from camexplain.data import X

at any indentation; strings and comments that mention a module are left alone, and every line
keeps its number (tracebacks point at the repository's lines). The metadata is in
``pyproject.toml``; the dependencies are ``requirements.txt`` without the test-only packages.
"""
from __future__ import annotations

import ast
import os
import re
from collections.abc import Collection
from pathlib import Path

PACKAGE = "camexplain"
HERE = Path(__file__).resolve().parent
# In requirements.txt for the tests only: pytest, the browser tests' driver, and timm, whose
# models the tests explain (a user's own timm model works without it being a dependency).
TEST_ONLY = {"pytest", "selenium", "timm"}

INIT = '''"""CAM-family heatmaps for classifiers and detectors: the repository's modules under one
namespace (``from camexplain.explain import heatmaps``, ``from camexplain.zoo import
load_classifier``); ``python -m camexplain`` is the command line of ``python main.py``."""
__version__ = "{version}"
'''
MAIN = f'''"""``python -m {PACKAGE}`` and the ``{PACKAGE}`` command: ``python main.py`` installed."""
from {PACKAGE}.main import _exit, main


def run() -> None:
    _exit(main())


if __name__ == "__main__":
    run()
'''


def namespaced(source: str, modules: Collection[str], package: str = PACKAGE) -> str:
    """``source`` with its imports of ``modules`` (bare top-level names) made imports from
    ``package``; every other byte as it was."""
    lines = source.encode("utf-8").splitlines(keepends=True)
    edits: list[tuple[int, int, int, bytes]] = []   # (line index, start, end, new bytes)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 \
                and node.module.split(".")[0] in modules:
            # only the module name after ``from`` changes (the names may span lines)
            found = re.compile(rb"from\s+(" + re.escape(node.module.encode()) + rb")(?![\w.])"
                               ).match(lines[node.lineno - 1], node.col_offset)
            if found is None:
                raise ValueError(f"line {node.lineno}: write 'from {node.module}' on one line")
            edits.append((node.lineno - 1, found.start(1), found.end(1),
                          f"{package}.{node.module}".encode()))
        elif isinstance(node, ast.Import) \
                and any(a.name.split(".")[0] in modules for a in node.names):
            if node.end_lineno != node.lineno or any(
                    "." in a.name for a in node.names if a.name.split(".")[0] in modules):
                raise ValueError(f"line {node.lineno}: write the import of "
                                 f"{', '.join(a.name for a in node.names)} on one line, "
                                 f"without a dotted name of this tool's modules")

            def names(aliases: list[ast.alias]) -> str:
                return ", ".join(a.name + (f" as {a.asname}" if a.asname else "")
                                 for a in aliases)
            theirs = [a for a in node.names if a.name.split(".")[0] not in modules]
            ours = [a for a in node.names if a.name in modules]
            statements = [f"import {names(theirs)}"] * bool(theirs) \
                + [f"from {package} import {names(ours)}"]
            edits.append((node.lineno - 1, node.col_offset, node.end_col_offset,
                          "; ".join(statements).encode()))
    for index, start, end, text in sorted(edits, reverse=True):
        lines[index] = lines[index][:start] + text + lines[index][end:]
    return b"".join(lines).decode("utf-8")


def requirements() -> list[str]:
    """``requirements.txt``'s packages without the test-only ones."""
    wanted = []
    for line in (HERE / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        name = re.match(r"[A-Za-z0-9._-]+", line)
        if name and name.group(0).lower() not in TEST_ONLY:
            wanted.append(line)
    return wanted


if __name__ == "__main__":      # setuptools runs this file as __main__; the tests import it
    from setuptools import setup
    from setuptools.command.build_py import build_py
    from setuptools.command.editable_wheel import editable_wheel

    class BuildPackage(build_py):
        """Copy the root modules into the package with their imports namespaced, and write
        the package's ``__init__.py`` and ``__main__.py``."""

        def find_package_modules(self, package, package_dir):
            return [found for found in super().find_package_modules(package, package_dir)
                    if found[1] != "setup"]

        def build_module(self, module, module_file, package):
            flat = {name for _, name, _ in self.find_all_modules()}
            parts = package.split(".") if isinstance(package, str) else package
            outfile = self.get_module_outfile(self.build_lib, parts, module)
            self.mkpath(os.path.dirname(outfile))
            source = Path(module_file).read_text(encoding="utf-8")
            Path(outfile).write_text(namespaced(source, flat), encoding="utf-8")
            return outfile, True

        def generated(self) -> dict[str, str]:
            folder = Path(self.build_lib, PACKAGE)
            return {str(folder / "__init__.py"): INIT.format(version=self.distribution
                                                             .get_version()),
                    str(folder / "__main__.py"): MAIN}

        def run(self) -> None:
            super().run()
            for path, text in self.generated().items():
                Path(path).write_text(text, encoding="utf-8")

        def get_outputs(self, include_bytecode=True):
            return [*super().get_outputs(include_bytecode), *self.generated()]

    class NoEditable(editable_wheel):
        def run(self) -> None:
            raise SystemExit(f"error: {PACKAGE} is written at build time (its imports are "
                             f"rewritten), so it cannot be installed editable: install it "
                             f"with 'pip install .' again after a change, or run the "
                             f"repository's modules in place")

    setup(install_requires=requirements(),
          cmdclass={"build_py": BuildPackage, "editable_wheel": NoEditable})
