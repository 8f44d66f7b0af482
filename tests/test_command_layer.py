"""The command layer stays the only place that knows flags and prints, the command line answers
``--help`` and flag errors without loading torch, and the README's "From Python" script runs."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_resnet

from errors import ParamError
from explain import heatmaps

ROOT = Path(__file__).resolve().parent.parent
COMMAND_LAYER = {"main.py", "validation.py", "commands.py", "jobs.py"}
HEAVY = ("torch", "torchvision", "matplotlib", "cv2")


def is_command_layer(path: Path) -> bool:
    """The command layer: ``main.py``, the job declarations, the flag checks, and the jobs'
    modules ``cli_*.py``."""
    return path.name in COMMAND_LAYER or path.name.startswith("cli_")


def library_modules() -> list[Path]:
    return sorted(p for p in ROOT.glob("*.py") if not is_command_layer(p))


def test_only_the_command_layer_knows_argparse_and_prints() -> None:
    offenders = []
    for path in library_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n.split(".")[0] == "argparse" for n in names):
                offenders.append(f"{path.name}:{node.lineno} imports argparse")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "print":
                offenders.append(f"{path.name}:{node.lineno} prints")
            if isinstance(node, ast.Name) and node.id == "Namespace":
                offenders.append(f"{path.name}:{node.lineno} reads a Namespace")
    assert library_modules() and not offenders, offenders


def flag_names_in_strings(source: str) -> list[tuple[int, str]]:
    """``--name`` inside a string of ``source`` that is not a docstring: a message that names
    a flag where it should name its parameter (the command layer words parameters as
    flags)."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, m.group(0)) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings
            for m in re.finditer(r"(?<![\w-])--[a-z][a-z_]+", node.value)]


def test_library_messages_name_parameters_not_flags() -> None:
    found = [f"{path.name}:{line} {flag}" for path in library_modules()
             for line, flag in flag_names_in_strings(path.read_text())]
    assert library_modules() and not found, found


def test_the_flag_guard_sees_a_flag() -> None:
    assert flag_names_in_strings('"""--doc is fine"""\nx = f"use --lr {1}"\n') == [(2, "--lr")]


def test_the_guard_sees_a_print(tmp_path: Path) -> None:
    """The walk above finds what it looks for (a guard that can fail)."""
    tree = ast.parse("import argparse\nprint('x')\n")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.func.id == "print"]
    assert len(calls) == 1


@pytest.mark.parametrize("argv", [["--help"], ["--vis", "lime"], ["--det_img", "x.png",
                                                                  "--det_layer", "layer9"],
                                  ["--batch_size", "0"], ["--target_layer", ","]])
def test_help_and_flag_errors_import_no_heavy_module(argv: list[str]) -> None:
    code = ("import sys, main\n"
            "try:\n    code = main.main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    code = e.code\n"
            f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules], code)\n")
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("LOADED [] "), (last, result.stderr)
    assert last.endswith(" 0") if argv == ["--help"] else last.endswith(" 2")
    if argv != ["--help"]:
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


def test_library_errors_name_the_parameter_and_the_cli_names_the_flag(capsys) -> None:
    model = random_resnet()
    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(ParamError, match=r"^layer 'layer3,layer4' names several") as caught:
        heatmaps(model, images, torch.tensor([0]), "gradcam", layer="layer3,layer4")
    assert caught.value.worded({"layer": "--target_layer"}).startswith(
        "--target_layer 'layer3,layer4' names several layers")


def test_every_flag_has_help_and_shows_its_default() -> None:
    import main
    parser = main.build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"--{action.dest} has no help text"
    text = " ".join(parser.format_help().split())
    start = text.index("--det_score_thresh DET_SCORE_THRESH explain")
    thresh = text[start:text.index("--det_max DET_MAX", start)]
    assert thresh.count("default") == 1, thresh      # its default said once, not twice
    assert "examples:" in text and "(default: 256)" in text     # --cam_batch_size
    assert "default: None" not in text


def test_help_shows_the_recipes_that_run() -> None:
    """The defaults of the recipe flags in --help are the config dataclasses' own, per job,
    and a job given no recipe flag runs its config's defaults."""
    import jobs
    import main
    from recipes import DetectorTrainConfig, FineTuneConfig, TrainConfig
    text = " ".join(main.build_parser().format_help().split())
    epochs = (f"default {TrainConfig.num_epochs} training the CIFAR ResNet-18, "
              f"{FineTuneConfig.num_epochs} fine-tuning, {DetectorTrainConfig.num_epochs} the "
              f"detector")
    assert epochs in text
    parser = main.build_parser()
    for argv, config in ((["--mode", "train"], TrainConfig),
                         (["--mode", "train", "--arch", "resnet18"], FineTuneConfig),
                         (["--mode", "train", "--det_vis"], DetectorTrainConfig)):
        args = parser.parse_args(argv)
        for name in ("num_epochs", "batch_size", "lr", "weight_decay", "save_path"):
            assert jobs.setting(args, name) == getattr(config, name), (argv, name)
    args = parser.parse_args(["--mode", "train", "--lr", "0.5"])
    assert jobs.setting(args, "lr") == 0.5


def readme_commands() -> list[list[str]]:
    """Every ``python main.py ...`` (or ``torchrun ... main.py ...``) command in the README's
    code blocks, continuation lines joined, as its argument list."""
    import shlex
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            words = shlex.split(line.split("#")[0])
            if "main.py" in words:
                commands.append(words[words.index("main.py") + 1:])
    return commands


def first_look_commands() -> list[list[str]]:
    """The jobs of ``scripts/first_look.sh``: each ``run PART FLAGS...`` line's flags."""
    import shlex
    script = (ROOT / "scripts" / "first_look.sh").read_text()
    return [shlex.split(line)[2:] for line in script.splitlines() if line.startswith("run ")]


def test_every_command_in_the_readme_parses_and_asks_for_a_job() -> None:
    """Flags, numbers, combinations and the flags each job reads: what can be checked without
    the photos and folders the examples name."""
    import jobs
    import main
    import validation
    commands = readme_commands() + first_look_commands()
    assert len(commands) >= 16, commands
    for argv in commands:
        parser = main.build_parser()
        args = parser.parse_args(argv)
        validation.check_numbers(args)
        validation.check_combinations(args)
        jobs.check_unused(args, main.parser_defaults(parser))
        validation.check_names(args)


def test_the_command_line_reference_matches_the_parser() -> None:
    """docs/cli.md is what cli_reference.py writes from today's parser and job table."""
    import cli_reference
    import main
    fresh = cli_reference.markdown(main.build_parser())
    assert cli_reference.PAGE.read_text(encoding="utf-8") == fresh, \
        "docs/cli.md is stale: run python cli_reference.py"


def test_from_python_script_runs_and_is_in_the_readme(tmp_path: Path) -> None:
    """The script runs from the repository's root and from examples/, without PYTHONPATH: in
    a copy of the repository (its modules, model and data linked) so that the ranking.png it
    writes into the current folder stays out of the repository."""
    script = ROOT / "examples" / "from_python.py"
    assert script.read_text().strip() in (ROOT / "README.md").read_text()
    repo = tmp_path / "repo"
    (repo / "examples").mkdir(parents=True)
    for path in [*ROOT.glob("*.py"), ROOT / "checkpoints", ROOT / "data"]:
        (repo / path.name).symlink_to(path)
    shutil.copy(script, repo / "examples" / script.name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for cwd, argv in ((repo, ["examples/from_python.py"]), (repo / "examples", [script.name])):
        result = subprocess.run([sys.executable, *argv], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, (cwd, result.stderr)
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 4 and lines[0].startswith("1. ")  # 2 methods + 2 baselines
        assert any("Grad-CAM (layer4)" in line for line in lines)
        assert (cwd / "ranking.png").stat().st_size > 1000


def test_ctrl_c_while_the_heavy_modules_import_is_one_line() -> None:
    code = ("import sys, main\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'commands':\n            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.exit(main.main(['--mode', 'test']))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 130
    assert result.stderr == "error: interrupted\n"
