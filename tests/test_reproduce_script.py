"""scripts/reproduce_figures.sh, dry-run: PYTHON=echo prints each command instead of running it,
so the options are checked without the hour the real run takes."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "reproduce_figures.sh"


def dry_run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *options, str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, check=False,
                          env={**os.environ, "PYTHON": "echo"}, timeout=60)


def commands(result: subprocess.CompletedProcess) -> list[str]:
    return [line[len("+ python "):] for line in result.stdout.splitlines()
            if line.startswith("+ python ")]


def test_detection_option_runs_only_the_detector_parts_and_all_of_them(tmp_path: Path) -> None:
    result = dry_run(tmp_path, "--quick", "--detection")
    assert result.returncode == 0, result.stderr
    runs = commands(result)
    assert runs and all("--det_vis" in run or run.startswith("scripts/") for run in runs), runs
    joined = "\n".join(runs)
    for part in ("--det_method drise", "--det_explain_missed", "scripts/drise_agreement.py",
                 "scripts/gradcam_sign.py", "--det_per_box"):
        assert part in joined, part


def test_full_quick_run_has_the_classifier_parts_too(tmp_path: Path) -> None:
    result = dry_run(tmp_path, "--quick")
    assert result.returncode == 0, result.stderr
    runs = commands(result)
    assert any("--sanity" in run for run in runs) and any("--det_vis" in run for run in runs)
    # the CNN-against-ViT page of a quick run goes into its folder, not into docs/
    vit = [run for run in runs if run.startswith("scripts/cnn_vs_vit.py")]
    assert len(vit) == 1 and f"--page {tmp_path / 'out'}/cnn_vs_vit.md" in vit[0], vit


def test_an_unknown_option_is_one_error_line(tmp_path: Path) -> None:
    result = dry_run(tmp_path, "--detections")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1


def test_the_pages_are_written_from_the_runs_and_each_part_is_timed(tmp_path: Path) -> None:
    """After every part, scripts/results_pages.py writes the pages from the runs (a quick
    run's into its own folder); parts.tsv holds each part's wall time for them."""
    result = dry_run(tmp_path, "--quick")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert commands(result)[-1] == f"scripts/results_pages.py {out} --pages {out}/pages"
    parts = [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines()]
    assert len(parts) >= 8 and all(seconds.isdigit() for _, seconds in parts)
    assert any(name.startswith("EfficientNet-Lite0") for name, _ in parts)
    assert "examples/efficientnet_lite0.py:build --image_dir data/samples" in result.stdout
