"""``pip install .`` installs the flat modules as one package, ``camexplain``: built offline
from a copy of the repository's sources and installed into a temporary folder, it explains a
model from another folder, looks its methods and jobs up by name inside the package, and puts
none of the tool's generic module names (``data``, ``model``...) on the user's path."""
from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the build reads besides the root modules: its configuration, the dependency list, the
# README (the long description) and the package data (pyproject.toml's package-data).
BUILD_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "requirements.txt", "README.md",
               "explorer.html")
FLAT = sorted(p.stem for p in ROOT.glob("*.py") if p.name != "setup.py")


def load_setup():
    spec = importlib.util.spec_from_file_location("camexplain_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)     # defines the rewriter; setup() runs only as __main__
    return module


def run(argv: list[str], cwd: Path, target: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if target is not None:
        env["PYTHONPATH"] = str(target)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed into a fresh folder (``pip install --target``), offline, without
    its dependencies (the test's interpreter has them), built from a copy of the sources."""
    for needed in ("pip", "setuptools"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed: the package cannot be built offline")
    base = tmp_path_factory.mktemp("package")
    source, target = base / "source", base / "site"
    source.mkdir()
    for name in [f"{m}.py" for m in FLAT] + ["setup.py", *BUILD_FILES]:
        shutil.copy2(ROOT / name, source / name)
    result = run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-build-isolation", "--no-index", "--no-cache-dir",
                  "--disable-pip-version-check", "--target", str(target), str(source)], cwd=base)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def test_the_build_rewrites_import_statements_only() -> None:
    source = textwrap.dedent('''\
        """import data and from model import X stay in a docstring"""
        import data
        import data as d, torch  # import model
        from model import (build,
                           load)
        from torch.utils import data as tud
        import torch.utils.data
        text = "from train import fit"


        def late():
            import outputs, runtime
            if True: from errors import UserError; import os
        ''')
    expected = textwrap.dedent('''\
        """import data and from model import X stay in a docstring"""
        from camexplain import data
        import torch; from camexplain import data as d  # import model
        from camexplain.model import (build,
                           load)
        from torch.utils import data as tud
        import torch.utils.data
        text = "from train import fit"


        def late():
            from camexplain import outputs, runtime
            if True: from camexplain.errors import UserError; import os
        ''')
    flat = {"data", "model", "train", "outputs", "runtime", "errors"}
    rewritten = load_setup().namespaced(source, flat)
    assert rewritten == expected
    assert load_setup().namespaced(rewritten, flat) == rewritten    # a rebuild changes nothing


def test_the_dependencies_are_the_requirements_without_the_test_ones() -> None:
    wanted = load_setup().requirements()
    assert "torch>=2.4" in wanted and "torchvision>=0.19" in wanted
    assert not {"pytest", "selenium", "timm"} & {w.split(">")[0].split("=")[0] for w in wanted}


def test_no_installed_module_imports_a_bare_name_of_the_tool(installed: Path) -> None:
    package = installed / "camexplain"
    assert sorted(p.stem for p in package.glob("*.py")) == sorted(
        [*FLAT, "__init__", "__main__"])
    assert (package / "explorer.html").is_file()
    bare = []
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bare += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in FLAT]
    assert not bare, bare


def test_the_installed_package_explains_from_another_folder_beside_a_users_data_py(
        installed: Path, tmp_path: Path) -> None:
    """From a folder of the user's own, with a ``data.py`` of its own: the API, the methods
    looked up by name, a job run through the command line's dispatch, and no top-level name of
    the tool's in ``sys.modules``."""
    (tmp_path / "data.py").write_text("VALUE = 42\n")
    (tmp_path / "use_it.py").write_text(textwrap.dedent(f'''\
        import sys

        import torch

        import camexplain.explain
        from camexplain.explain import heatmaps, make_explainer
        from camexplain.main import main
        from camexplain.zoo import load_classifier

        assert camexplain.explain.__file__.startswith({str(installed)!r})
        loaded = load_classifier("resnet18")          # torchvision's, random weights
        images, targets = torch.rand(2, 3, 64, 64), torch.tensor([1, 2])
        maps = heatmaps(loaded.module, images, targets, "gradcam", layer=loaded.layer())
        assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1, maps.shape
        eigen = make_explainer("eigencam", loaded.module, "layer4")(images, targets)
        assert eigen.shape == (2, 64, 64)
        assert main(["--arch", "resnet18", "--list_layers"]) == 0     # jobs.py's dispatch
        assert "camexplain.gradfree" in sys.modules and "camexplain.cli_classify" in sys.modules
        leaked = [name for name in {FLAT!r} if name in sys.modules]
        assert not leaked, leaked

        import data                                   # the user's own
        assert data.VALUE == 42 and data.__file__ == {str(tmp_path / "data.py")!r}
        print("OK")
        '''))
    result = run([sys.executable, "use_it.py"], cwd=tmp_path, target=installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")
    assert "layer4" in result.stdout and "<- auto" in result.stdout     # the list of layers


def test_the_installed_command_answers_help(installed: Path, tmp_path: Path) -> None:
    result = run([str(installed / "bin" / "camexplain"), "--help"], cwd=tmp_path,
                 target=installed)
    assert result.returncode == 0, result.stderr
    assert "--vis" in result.stdout
    # the examples and the errors name the command that is installed, not the repository's
    assert "\n  camexplain --mode test --save_path" in result.stdout, result.stdout
    assert "python main.py" not in result.stdout
    result = run([sys.executable, "-m", "camexplain", "--vis", "nothing"], cwd=tmp_path,
                 target=installed)
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
    assert "(see camexplain --help)" in result.stderr, result.stderr
