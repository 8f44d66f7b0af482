"""outputs.py: files written whole or not at all, one line on failure, listed per run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import main
import outputs
from cli import ROOT, assert_one_line_error, run_here
from errors import UserError
from tinydata import random_checkpoint, write_fashion_mnist


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    return (random_checkpoint(root / "ck.pth", "fashion_mnist"),
            write_fashion_mnist(root / "data", n_test=8, n_train=32))


def test_a_failed_write_leaves_nothing_and_names_the_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(UserError, match=r"cannot write .*table\.csv: disk full"), \
            outputs.atomic(target) as tmp:
        tmp.write_text("half a ta")
        raise OSError(28, "disk full")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    finished = subprocess.Popen(["true"])   # a process that has ended, like a killed writer
    finished.wait()
    stale = tmp_path / f".ck.pth.{finished.pid}.tmp.pth"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".ck.pth.{os.getppid()}.tmp.pth"   # a running process: kept
    live.write_bytes(b"being written")
    outputs.write_text(tmp_path / "ck.pth", "new")
    assert not stale.exists() and live.exists() and (tmp_path / "ck.pth").read_text() == "new"


def test_a_folder_is_listed_once_per_run_for_stale_temporaries(tmp_path, monkeypatch):
    """The temporaries of dead writers are found by one listing of the folder, on the run's
    first write there, and each is removed when its own target is written: a folder of
    thousands of panels is not listed once per panel."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = tmp_path / f".b.png.{finished.pid}.tmp.png"
    stale.write_bytes(b"half a panel")
    other = tmp_path / f".user.{finished.pid}.tmp.png.notes"      # not a temporary's name
    other.write_bytes(b"kept")
    listed = []
    original = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: listed.append(self) or original(self))
    outputs.finish_run(tmp_path)                       # a fresh run: nothing listed yet
    for i in range(20):
        outputs.write_text(tmp_path / f"a{i}.png", "x")
    assert stale.exists()                              # not b.png's turn yet
    outputs.write_text(tmp_path / "b.png", "new")
    assert not stale.exists() and other.exists() and (tmp_path / "b.png").read_text() == "new"
    assert listed.count(tmp_path.absolute()) == 1
    outputs.finish_run(tmp_path, announce=False)       # the next run lists it again
    outputs.write_text(tmp_path / "c.png", "x")
    assert listed.count(tmp_path.absolute()) == 2


# A subprocess whose files may not grow past a limit (``ulimit -f``): writes fail with EFBIG
# exactly as on a full disk, without filling one.
_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.path.insert(0, {root!r})
import main
sys.exit(main.main(sys.argv[1:]))
"""


def _run_limited(limit: int, *args) -> subprocess.CompletedProcess:
    code = _LIMITED.format(limit=limit, root=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                            capture_output=True, timeout=900, check=False)
    # Decoded by hand: text=True would turn a progress bar's carriage returns into new lines.
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                       result.stderr.decode())


def test_a_full_disk_while_drawing_panels_is_one_line_and_no_half_file(setup, tmp_path):
    ckpt, data_dir = setup
    result = _run_limited(20_000, "--save_path", ckpt, "--data_dir", data_dir, "--vis",
                          "gradcam", "--vis_num", "2", "--out_dir", tmp_path / "out")
    assert_one_line_error(result, "cannot write", "gradcam_0_pred_", "File too large")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_old_one(setup, tmp_path):
    ckpt, data_dir = setup
    old = tmp_path / "ck.pth"
    old.write_bytes(ckpt.read_bytes())
    result = _run_limited(1_000_000, "--mode", "train", "--dataset", "fashion_mnist",
                          "--data_dir", data_dir, "--num_epochs", "1", "--batch_size", "32",
                          "--save_path", old, "--log_dir", tmp_path / "logs")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    shown = [line.split("\r")[-1] for line in result.stderr.split("\n")]  # progress bars erase
    assert [line for line in shown if line.strip()] == [f"error: cannot write {old}: File too large"]
    assert old.read_bytes() == ckpt.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth", "logs"]


def test_each_run_lists_its_own_files(setup, tmp_path, capsys):
    ckpt, data_dir = setup
    common = ["--save_path", str(ckpt), "--data_dir", str(data_dir), "--out_dir", str(tmp_path)]
    assert main.main(common + ["--vis", "gradcam", "--vis_num", "2"]) == 0
    assert main.main(common + ["--vis", "cam", "--vis_num", "3"]) == 0
    manifests = sorted((tmp_path / "runs").glob("*.txt"))
    assert len(manifests) == 2
    listed = [m.read_text().splitlines() for m in manifests]
    assert all(lines[0].startswith("# python main.py") for lines in listed)
    reports = [{f for f in lines[1:] if os.path.basename(f) == "report.html"} for lines in listed]
    assert all(len(r) == 1 for r in reports)        # each run's report, in its own list
    assert all("run_facts.json" in {os.path.basename(f) for f in lines[1:]} for lines in listed)
    files = [{os.path.basename(f) for f in lines[1:]} - {"report.html", "run_facts.json"}
             for lines in listed]
    assert {f.split("_")[0] for run in files for f in run} == {"gradcam", "cam"}
    assert files[0].isdisjoint(files[1]) and sorted(map(len, files)) == [3, 4]
    assert capsys.readouterr().out.count("Files of this run:") == 2


def test_nothing_written_no_manifest(setup, tmp_path, capfd):
    ckpt, data_dir = setup
    result = run_here(capfd, "--save_path", ckpt, "--data_dir", data_dir, "--vis", "gradcam",
                      "--target_layer", "fc", "--out_dir", tmp_path / "out")
    assert_one_line_error(result, "layers that work")
    assert not (tmp_path / "out").exists()


def test_only_regular_files_or_new_paths_are_written(tmp_path):
    """The one rule, at every write: a device, a FIFO or a dangling link is never replaced."""
    import os as _os
    _os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for target, kind in (("/dev/full", "character device"), (tmp_path / "fifo", "FIFO"),
                         (tmp_path / "dangling", "missing target")):
        with pytest.raises(UserError, match=kind):
            outputs.write_text(target, "x")
    assert outputs.path_kind("/dev/full") == "a character device"
    assert (tmp_path / "dangling").is_symlink() and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "fifo"]
    outputs.write_text(tmp_path / "new.txt", "x")   # a new path and a regular file: written
    outputs.write_text(tmp_path / "new.txt", "y")
    assert (tmp_path / "new.txt").read_text() == "y"


def test_distinct_prints_two_different_numbers_differently():
    assert outputs.distinct(0.9996, 1.0) == ("0.9996", "1.0000")
    assert outputs.distinct(0.5, 0.75) == ("0.50", "0.75")
    assert outputs.distinct(1.0, 1.0) == ("1.00", "1.00")
    best, thresh = outputs.distinct(0.99999994, 1.0)
    assert best != thresh


def test_sigterm_during_a_write_removes_the_temporary_and_ends_like_ctrl_c(tmp_path,
                                                                           monkeypatch, capfd):
    """SIGTERM arrives while a checkpoint is being written: the old file stays, no temporary is
    left, and main ends with one line and the exit status of Ctrl-C."""
    import signal

    ckpt = random_checkpoint(tmp_path / "ck.pth")
    data = write_fashion_mnist(tmp_path / "data", n_test=8, n_train=32)
    before = ckpt.read_bytes()
    real = outputs.atomic

    @__import__("contextlib").contextmanager
    def killed_midway(path):
        with real(path) as tmp:
            yield tmp
            if str(path).endswith(".pth"):
                assert tmp.stat().st_size > 0          # written, not yet renamed into place
                os.kill(os.getpid(), signal.SIGTERM)   # the handler raises here
    monkeypatch.setattr(outputs, "atomic", killed_midway)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = main.main(["--mode", "train", "--dataset", "fashion_mnist", "--data_dir",
                          str(data), "--num_epochs", "1", "--batch_size", "32", "--precision",
                          "fp32", "--save_path", str(ckpt), "--log_dir", str(tmp_path / "logs")])
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capfd.readouterr().err
    assert code == 130 and "Traceback" not in err
    shown = [line.split("\r")[-1] for line in err.split("\n")]   # progress bars erase
    assert [line for line in shown if line.strip()] == ["error: interrupted"], err
    assert ckpt.read_bytes() == before
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
