"""Sharded deletion/insertion under torchrun against one process, on the same images.

    python bench/bench_sharded_evaluate.py [--nproc 2] [--images 32] [--steps 100] \
        [--vis gradcam] [--device cpu] [--repeats 1]

Runs the user's command twice, end to end (start-up and image selection included):

* one process: ``python main.py --mode test --vis V --hidden_strategy zero ...``, with all
  the threads PyTorch takes by default;
* ``torchrun --nproc_per_node N main.py ...`` with the same flags: each process evaluates its
  block of the images and rank 0 gathers the curves and writes the outputs. ``torchrun`` gives
  each process ``OMP_NUM_THREADS=1`` unless the environment sets it.

It checks that both wrote the same AUCs (to 1e-6) and prints the wall-clock times and their
ratio (target: the sharded run takes at most 0.6x the single-process time with 2 CPU
processes). Other jobs on the machine make the times noisy: the load average is printed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "resnet18_fashion_mnist.pth"


def timed(command: list[str], env: dict[str, str]) -> float:
    """Seconds that ``command`` took; a failing command stops the bench with its output."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds


def aucs(folder: Path) -> dict[str, np.ndarray]:
    """Per-image deletion and insertion AUCs of every method and baseline of a run."""
    found = {}
    for path in sorted(folder.glob("curves_*.npz")):
        with np.load(path) as npz:
            found[path.stem] = np.stack([npz["deletion_auc"], npz["insertion_auc"]])
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="processes for the sharded run")
    p.add_argument("--images", type=int, default=32, help="--num_eval")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--vis", default="gradcam")
    p.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per process) or auto")
    p.add_argument("--repeats", type=int, default=1, help="runs of each (fastest counts)")
    args = p.parse_args()

    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = {name: Path(tmp) / name for name in ("one", "sharded")}
        flags = ["--mode", "test", "--save_path", str(CHECKPOINT), "--data_dir",
                 str(ROOT / "data"), "--vis", args.vis, "--hidden_strategy", "zero",
                 "--num_eval", str(args.images), "--steps", str(args.steps),
                 "--device", args.device, "--precision", "fp32"]
        one = [sys.executable, "main.py", *flags, "--out_dir", str(out["one"])]
        sharded = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(args.nproc), "main.py", *flags,
                   "--out_dir", str(out["sharded"])]
        times = {"one": float("inf"), "sharded": float("inf")}
        for _ in range(args.repeats):  # interleaved, so that a burst of load hits both
            times["one"] = min(times["one"], timed(one, env))
            times["sharded"] = min(times["sharded"], timed(sharded, env))
        single, split = aucs(out["one"]), aucs(out["sharded"])

    same = bool(single) and single.keys() == split.keys() and all(
        np.abs(single[k] - split[k]).max() <= 1e-6 for k in single)
    print(f"Deletion/insertion of {args.vis} + baselines, {args.images} images, {args.steps} "
          f"steps, fp32, device {args.device}, end to end through main.py")
    print(f"  one process:              {times['one']:7.1f} s")
    print(f"  torchrun, {args.nproc} processes:     {times['sharded']:7.1f} s")
    print(f"  sharded / one = {times['sharded'] / times['one']:.2f} (target <= 0.6 with 2 "
          f"processes); AUCs equal to 1e-6: {'yes' if same else 'NO'}")
    load = os.getloadavg()[0]
    print(f"Load average {load:.1f} on {os.cpu_count()} CPUs"
          + (": other processes share the CPU, so these timings are noisy." if load > 1.5 else "."))
    if not same:
        sys.exit("error: the sharded run's per-image AUCs differ from the single process's")


if __name__ == "__main__":
    main()
