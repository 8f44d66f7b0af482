"""The three speed and memory targets of explaining photos with a torchvision CNN, in one run.

    python bench/bench_photos.py [--arch resnet50] [--batch 16] [--repeat 3] [--loop_images 256]
                                 [--small 200] [--large 2000] [--folder_arch resnet18]
                                 [--panel_formats png,jpg] [--skip_memory]

1. **Grad-CAM against its floor.** ``explain.heatmaps(..., "gradcam", "layer4")`` on a batch
   of 224-pixel images against the least any Grad-CAM can do on the same batch: one forward
   pass that keeps the layer's activation, and one ``torch.autograd.grad`` of the target
   scores to it (target: at most 1.3x).
2. **Memory does not grow with the folder, and the folder runs near the floor's speed.**
   ``main.py --image_dir DIR --vis gradcam`` on a folder of ``--small`` and of ``--large``
   JPEG photos (640x480, written here), in a subprocess whose peak memory is sampled every
   50 ms over the process and its data-loader workers (the sum of their resident sets);
   target: equal within 10%. Its throughput end to end (reading, decoding, Grad-CAM, one
   panel per photo, for each ``--panel_formats``): ``large - small`` photos over the
   difference of the two runs' wall times, which leaves out what both pay once (start-up,
   loading the model), against the floor's throughput for the same model (``--folder_arch``),
   batch and precision, measured between the runs (target: at least 0.85x).
3. **Decoding costs little.** The photo loop as ``main.py`` runs it, with the decoding in
   the main process and with two worker processes, against the same loop over the same images
   already decoded in memory; the difference is what reading and decoding cost (target: at
   most 10% of the wall time). Workers share the cores with the model's threads, so their
   contention is included; ``folders.loader_workers`` picks the number the tool uses.

4. **Where the time goes.** The loop ``main.py`` runs for photos
   (``cli_classify.explain_photos``), in this process, with a clock around each stage
   (reading and decoding, the Grad-CAM pass, drawing the panel, encoding and writing it), for
   each ``--panel_formats``: shares of one loop, which hold however the machine's speed drifts
   between the runs that sections 1-3 compare.

Random weights (weights do not change the cost), the machine's default thread count; the
floors run in the precision ``main.py``'s Grad-CAM runs in under ``--precision auto`` (fp32 on
a CPU: Grad-CAM is not validated for bf16 there, see ``tests/test_precision.py``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cam import capture_activation, resolve_layer
from explain import heatmap_precision, heatmaps
from folders import PhotoDataset, loader_workers, photo_batches, photo_loader
from runtime import autocast, cpu_name, precision_dtype, precision_label, resolve_device
from zoo import load_classifier


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def floor(model: torch.nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor,
          dtype: torch.dtype | None = None) -> None:
    """One forward keeping ``layer``'s activation, one gradient of the scores to it, in
    ``dtype``'s autocast (channels_last, as the explainers run it) or fp32."""
    if dtype is not None:
        images = images.contiguous(memory_format=torch.channels_last)
    with capture_activation(resolve_layer(model, layer)) as cap, autocast(images.device, dtype):
        scores = model(images).gather(1, targets[:, None]).float().sum()
    torch.autograd.grad(scores, cap.activation)
    if images.is_cuda:
        torch.cuda.synchronize()


def write_photos(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` 640x480 JPEG photos: smooth random colour fields, so they compress as photos do."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(
            folder / f"photo_{i:05d}.jpg", quality=90)
    return folder


def _tree_rss_kb(pid: int) -> int:
    """Resident memory (kB) of ``pid`` and every process descended from it, found through
    each process's ``/proc/PID/task/TID/children`` (a few small reads, where a scan of all of
    ``/proc`` took about 3 ms: 6% of a core at one sample every 50 ms, taken from the run)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f
                               if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def peak_memory_mb(argv: list[str]) -> tuple[float, float]:
    """Run ``main.py ARGV``; its peak memory (MB, process tree) and wall time (s)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kb(proc.pid))
        time.sleep(0.05)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"main.py {' '.join(argv)} failed: {err[-400:]}")
    return peak / 1024, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=2000)
    p.add_argument("--folder_arch", default="resnet18",
                   help="the model of the folder runs (a smaller one keeps them short)")
    p.add_argument("--panel_formats", default="png,jpg",
                   help="the --panel_format of the folder runs, a comma list")
    p.add_argument("--loop_images", type=int, default=256,
                   help="photos of the decoding comparison (its workers start once per run)")
    p.add_argument("--skip_memory", action="store_true")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = p.parse_args()
    device = resolve_device(args.device)
    dtype = heatmap_precision(["gradcam"], precision_dtype("auto", device), device)["gradcam"]
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU {cpu_name()}, device {device}, Grad-CAM in {precision_label(dtype)}")

    loaded = load_classifier(args.arch, device=device)
    model = loaded.module.eval()
    layer = loaded.layer("auto")
    size = loaded.input_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    targets = torch.randint(0, len(loaded.classes), (args.batch,), device=device)
    heatmaps(model, images[:2], targets[:2], "gradcam", layer, dtype=dtype)   # warm-up
    t_floor = best_of(lambda: floor(model, layer, images, targets, dtype), args.repeat)
    t_gradcam = best_of(lambda: heatmaps(model, images, targets, "gradcam", layer,
                                         batch_size=args.batch, dtype=dtype), args.repeat)
    with torch.no_grad(), autocast(device, dtype):
        t_forward = best_of(lambda: model(images), args.repeat)
    print(f"\n1. Grad-CAM, {args.arch} at {size} px, batch {args.batch}, layer {layer}")
    print(f"   forward alone (no grad)             {t_forward * 1000:8.1f} ms")
    print(f"   floor: forward + one autograd.grad  {t_floor * 1000:8.1f} ms")
    print(f"   explain.heatmaps gradcam            {t_gradcam * 1000:8.1f} ms   "
          f"= {t_gradcam / t_floor:.2f}x the floor (target <= 1.3x), "
          f"{t_gradcam / t_forward:.2f}x a forward")

    with tempfile.TemporaryDirectory(prefix="bench_photos_") as tmp:
        tmp = Path(tmp)
        n_loop = args.loop_images
        folder = write_photos(tmp / "loop", n_loop)
        paths = sorted(folder.glob("*.jpg"))
        prep = loaded.inputs

        waited: dict[int, float] = {}

        def with_loader(workers: int) -> None:
            """The photo loop; ``waited[workers]``: seconds spent waiting for the next batch
            (reading and decoding, measured inside the same run)."""
            batches = iter(photo_batches(photo_loader(PhotoDataset(paths, prep), args.batch,
                                                      workers=workers)))
            wait = 0.0
            while True:
                start = time.perf_counter()
                batch = next(batches, None)
                wait += time.perf_counter() - start
                if batch is None:
                    break
                x = prep.normalize(batch.pixels).to(device)
                heatmaps(model, x, targets[:len(x)], "gradcam", layer, batch_size=args.batch,
                         dtype=dtype)
            waited[workers] = wait

        decoded = [prep.normalize(b.pixels).to(device) for b in
                   photo_batches(photo_loader(PhotoDataset(paths, prep), args.batch, workers=0))]

        def in_memory() -> None:
            for x in decoded:
                heatmaps(model, x, targets[:len(x)], "gradcam", layer, batch_size=args.batch,
                         dtype=dtype)

        def decode_only() -> None:
            list(photo_batches(photo_loader(PhotoDataset(paths, prep), args.batch, workers=0)))

        # interleaved, best of --repeat each: the machine's speed drifts between runs
        runs = {"memory": in_memory, "decode": decode_only, 0: lambda: with_loader(0),
                 2: lambda: with_loader(2)}
        best = {k: float("inf") for k in runs}
        share_in_run = {0: 1.0, 2: 1.0}
        for _ in range(args.repeat):
            for key, fn in runs.items():
                elapsed = best_of(fn, 1)
                if key in share_in_run:
                    share_in_run[key] = min(share_in_run[key], waited[key] / elapsed)
                best[key] = min(best[key], elapsed)
        chosen = loader_workers("cpu")
        print(f"\n3. Decoding: {n_loop} JPEG photos 640x480 -> {size} px, Grad-CAM {args.arch}, "
              f"best of {args.repeat} interleaved")
        print(f"   decoding alone, in this process     {best['decode']:8.2f} s")
        print(f"   images already in memory            {best['memory']:8.2f} s")
        for workers in (0, 2):
            extra = max(0.0, best[workers] - best["memory"]) / best[workers]
            mark = "  <- the tool's choice here" if workers == chosen else ""
            print(f"   read + decoded, {workers} worker(s)         {best[workers]:8.2f} s   waiting "
                  f"for images {100 * share_in_run[workers]:.1f}% of the run (target <= 10%); "
                  f"{100 * extra:.1f}% slower than in memory{mark}")

        time_shares(args, device, paths, tmp)
        if args.skip_memory:
            return
        folder_runs(args, device, dtype, tmp)


def time_shares(args: argparse.Namespace, device: torch.device, paths: list[Path],
                tmp: Path) -> None:
    """Section 4: where the photo loop's time goes, for each panel format: the loop that
    ``main.py`` runs (``cli_classify.explain_photos``, in this process, on the decoding
    comparison's photos) with a clock around each of its stages. The shares come from one
    loop, so they hold however the machine's speed drifts between runs."""
    import contextlib
    import io

    import cli_classify
    import explain
    import main as cli
    import sources
    import visualize
    loaded = load_classifier(args.folder_arch, device=device)
    layer = loaded.layer("auto")
    stages = {"reading and decoding": 0.0, "Grad-CAM pass (prediction and map)": 0.0,
              "drawing the panel": 0.0, "encoding and writing it": 0.0}

    def clocked(fn, stage):
        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stages[stage] += time.perf_counter() - start
        return timed

    def clocked_batches(*a, **k):
        batches = iter(originals["loaded_batches"](*a, **k))
        while (batch := clocked(next, "reading and decoding")(batches, None)) is not None:
            yield batch

    originals = {"loaded_batches": sources.loaded_batches,
                 "predict_and_explain": explain.predict_and_explain,
                 "photo_panel": visualize.photo_panel, "save_rgb": visualize.save_rgb}
    print(f"\n4. Where the photo loop's time goes: {len(paths)} photos, {args.folder_arch}, "
          f"batch {args.batch} (ms per photo, share of the loop)")
    try:
        sources.loaded_batches = clocked_batches
        explain.predict_and_explain = clocked(originals["predict_and_explain"],
                                              "Grad-CAM pass (prediction and map)")
        visualize.photo_panel = clocked(originals["photo_panel"], "drawing the panel")
        visualize.save_rgb = clocked(originals["save_rgb"], "encoding and writing it")
        best: dict[str, tuple[float, dict[str, float]]] = {}
        for round_ in range(1 + max(1, args.repeat)):      # round 0 warms up, untimed
            for fmt in args.panel_formats.split(","):
                flags = cli.build_parser().parse_args(
                    ["--arch", args.folder_arch, "--image_dir", str(paths[0].parent), "--vis",
                     "gradcam", "--batch_size", str(args.batch), "--panel_format", fmt,
                     "--out_dir", str(tmp / f"shares_{fmt}"), "--device", device.type])
                stages.update(dict.fromkeys(stages, 0.0))
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    cli_classify.explain_photos(flags, loaded, paths[:args.batch] if round_ == 0
                                                else paths, ["gradcam"], layer, device)
                wall = time.perf_counter() - start
                if round_ and wall < best.get(fmt, (float("inf"),))[0]:
                    best[fmt] = (wall, dict(stages))
        loops = max(1, args.repeat)
        for fmt, (wall, spent) in best.items():
            rest = wall - sum(spent.values())
            parts = ", ".join(f"{name} {1000 * t / len(paths):.1f} ({100 * t / wall:.0f}%)"
                              for name, t in [*spent.items(), ("the rest", rest)])
            print(f"   --panel_format {fmt}: {1000 * wall / len(paths):.1f} ms per photo "
                  f"(the fastest of {loops} loop{'s' * (loops > 1)}): {parts}")
    finally:
        sources.loaded_batches = originals["loaded_batches"]
        explain.predict_and_explain = originals["predict_and_explain"]
        visualize.photo_panel = originals["photo_panel"]
        visualize.save_rgb = originals["save_rgb"]


def folder_runs(args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None,
                tmp: Path) -> None:
    """Section 2: ``main.py`` on a folder of ``--small`` and of ``--large`` photos, for each
    panel format: peak memory, and the throughput of the photos the large run has more,
    against the floor measured just before and just after that pair of runs (this machine's
    speed drifts by tens of percent over minutes, so a floor measured once, earlier, would
    compare two different machines)."""
    small = load_classifier(args.folder_arch, device=device)
    x = torch.randn(args.batch, 3, small.input_size, small.input_size, device=device)
    y = torch.randint(0, len(small.classes), (args.batch,), device=device)
    layer = small.layer("auto")
    floor(small.module, layer, x, y, dtype)                              # warm-up

    def floor_rate() -> float:
        return args.batch / best_of(lambda: floor(small.module, layer, x, y, dtype), args.repeat)

    folders = {n: write_photos(tmp / f"dir{n}", n, seed=n) for n in (args.small, args.large)}
    print(f"\n2. main.py --arch {args.folder_arch} --image_dir DIR --vis gradcam --vis_num N "
          f"--batch_size {args.batch} (peak memory of the process and its workers)")
    for fmt in args.panel_formats.split(","):
        results, walls = {}, {}
        before = floor_rate()
        for n, photos in folders.items():
            out = tmp / f"out{n}_{fmt}"
            mb, wall = peak_memory_mb(["--arch", args.folder_arch, "--image_dir", str(photos),
                                       "--vis", "gradcam", "--vis_num", str(n),
                                       "--panel_format", fmt, "--out_dir", str(out),
                                       "--batch_size", str(args.batch),
                                       "--device", device.type])
            written = list((out / "gradcam").glob(f"*.{fmt}"))
            size = sum(p.stat().st_size for p in written) / max(1, len(written)) / 1024
            results[n], walls[n] = mb, wall
            print(f"   --panel_format {fmt}, {n:5d} photos: peak {mb:7.1f} MB, {wall:6.1f} s, "
                  f"{len(written)} panels of {size:.0f} kB on average")
            shutil.rmtree(out)
        after = floor_rate()
        rate = (args.large - args.small) / max(walls[args.large] - walls[args.small], 1e-9)
        mean = (before + after) / 2
        print(f"   --panel_format {fmt}: {args.large} / {args.small} photos "
              f"{results[args.large] / results[args.small]:.3f}x the peak memory (target "
              f"within 10%); end to end {args.large - args.small} photos more in "
              f"{walls[args.large] - walls[args.small]:.1f} s more: {rate:.1f} photos/s")
        print(f"      the floor of {args.folder_arch} (forward + autograd.grad to {layer}, "
              f"batch {args.batch}, {precision_label(dtype)}), best of {args.repeat} before "
              f"and after the runs: {before:.1f} and {after:.1f} images/s -> "
              f"{rate / mean:.2f}x their mean (target >= 0.85x), "
              f"{rate / max(before, after):.2f}x the faster")

if __name__ == "__main__":
    main()
