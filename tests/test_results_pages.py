"""The results pages are written from their runs' records, not by hand: each committed page is
exactly what ``scripts/results_pages.py`` writes from the files beside it, and recording a
page from a reproduction's folder copies what the page reads."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import pagekit
import results_pages

PAGES = ROOT / "docs" / "results"


@pytest.mark.parametrize("name", sorted(results_pages.PAGES))
def test_each_committed_page_is_what_its_records_write(name):
    folder = PAGES / name
    assert folder.is_dir(), f"no records for {name}: run scripts/reproduce_figures.sh"
    written = results_pages.PAGES[name].write(folder) + "\n"
    assert (PAGES / f"{name}.md").read_text() == written, \
        f"{name}.md is stale: python scripts/results_pages.py --rebuild"


def test_the_cnn_against_vit_page_is_what_its_record_writes():
    import cnn_vs_vit
    written = cnn_vs_vit.page(PAGES / "cnn_vs_vit") + "\n"
    assert (PAGES / "cnn_vs_vit.md").read_text() == written, \
        "cnn_vs_vit.md is stale: python scripts/cnn_vs_vit.py --rebuild"


@pytest.mark.parametrize("name", sorted(results_pages.PAGES) + ["cnn_vs_vit"])
def test_every_figure_a_page_shows_is_committed(name):
    import re
    text = (PAGES / f"{name}.md").read_text()
    shown = re.findall(r'(?:src="|\]\()([^")]+\.png)', text)
    assert shown, name
    for figure in shown:
        assert (PAGES / figure).is_file(), f"{name}.md shows {figure}, which is not there"


def test_rebuild_from_another_folder(tmp_path):
    """``--rebuild --pages DIR`` writes the same pages from a copy of the records, run from
    any working directory."""
    for name in results_pages.PAGES:
        shutil.copytree(PAGES / name, tmp_path / name)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_pages.py"),
                           "--rebuild", "--pages", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for name in results_pages.PAGES:
        assert (tmp_path / f"{name}.md").read_text() == (PAGES / f"{name}.md").read_text()


def test_record_copies_what_the_page_reads_and_drops_what_the_run_lacks(tmp_path):
    """Recording from a reproduction folder (laid out as the script writes it) copies each
    file the page reads; a file an earlier record had and this run did not write is removed,
    so a page never mixes two runs."""
    page = results_pages.PAGES["efficientnet_lite0"]
    runs = tmp_path / "runs"
    records = PAGES / "efficientnet_lite0"
    for record_name, pattern in page.files.items():
        source = records / record_name
        if source.is_file():
            target = runs / pattern.replace("*", "Egyptian_cat")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    (runs / "own_model" / "sanity" / "sanity" / "sanity.json").unlink()
    folder = tmp_path / "pages" / "efficientnet_lite0"
    folder.mkdir(parents=True)
    (folder / "sanity.json").write_text("{}")          # from an earlier run
    assert page.record(runs, folder)
    assert not (folder / "sanity.json").exists()
    for record_name in ("predictions.csv", "panels_facts.json", "leaderboard_blur.json"):
        assert (folder / record_name).read_bytes() == (records / record_name).read_bytes()
    text = page.write(folder)
    assert "## The sanity check" not in text and "## The leaderboard" in text
    assert not page.record(tmp_path / "empty", tmp_path / "other")


def test_the_command_refuses_a_missing_runs_folder(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_pages.py"),
                           str(tmp_path / "nothing"), "--pages", str(tmp_path / "p")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "p").exists()


def _row(method, mean, low, high, baseline=False):
    return {"method": method, "title": method, "layer": "" if baseline else "layer4",
            "baseline": baseline, "insertion_minus_deletion_mean": mean,
            "insertion_minus_deletion_ci95_low": low, "insertion_minus_deletion_ci95_high": high}


@pytest.mark.parametrize("best, verdict", [((0.5, 0.45, 0.55), "beats the centre prior"),
                                           ((0.3, 0.25, 0.35), "ties the centre prior"),
                                           ((0.1, 0.05, 0.15), "stays below the centre prior")])
def test_the_reading_of_a_leaderboard_follows_its_intervals(best, verdict):
    rows = [_row("gradcam", *best), _row("centre", 0.3, 0.2, 0.4, True),
            _row("random", 0.0, -0.02, 0.02, True)]
    rows.sort(key=lambda r: -r["insertion_minus_deletion_mean"])
    text = pagekit.against_baselines(rows)
    assert verdict in text
    assert "1 of the 1 method-and-layer rows beat the random map" in text


def test_parts_and_minutes(tmp_path):
    (tmp_path / "parts.tsv").write_text("test accuracy\t33\nleaderboard, two layers\t725\n")
    assert pagekit.read_parts(tmp_path / "parts.tsv") == {"test accuracy": 33.0,
                                                          "leaderboard, two layers": 725.0}
    assert [pagekit.minutes(s) for s in (33, 725, 7300)] == ["33 s", "12.1 min", "2 h 02 min"]


def test_run_facts_name_the_machine(tmp_path):
    """A run's ``run_facts.json`` (written beside its report) holds its facts, the machine
    and the date: what the pages' machine lines are read from."""
    import outputs
    from report import FACTS_NAME, RunFacts, write_facts
    facts = RunFacts("python main.py --vis gradcam", "heatmaps", precision="fp32",
                     device="cpu", seconds=1.5)
    path = write_facts(tmp_path, facts)
    outputs.written.clear()
    record = json.loads(path.read_text())
    assert path.name == FACTS_NAME
    assert record["command"] == facts.command and record["seconds"] == 1.5
    assert record["machine"]["cpu"] and record["machine"]["cores"] >= 1
    assert len(record["date"]) == 10
    line = pagekit.machine_line(record)
    assert record["machine"]["cpu"] in line and "precision fp32" in line
