#!/usr/bin/env bash
# One health and speed check on a CUDA machine: the test suite (CUDA tests included), a short
# Fashion-MNIST training run, heatmaps, a deletion/insertion evaluation, a detection run and
# every bench/ script with --device cuda; then one JSON summary on stdout's last line.
#
#   scripts/gpu_check.sh [--device cuda|cpu] [OUT_DIR]      (default: cuda when there is one)
#
# About 5 minutes on one H100 (budgeted, not yet measured: no GPU was at hand when it was
# written). With --device cpu (or without a GPU) it runs a reduced form of every step, a few
# minutes on 2 cores, so that the script itself is known to work before a GPU is spent on it.
# Every step's output goes to OUT_DIR/logs/STEP.log (default OUT_DIR ./gpu_check); a failing
# step is recorded and the next one runs. Set PYTHON to use another interpreter and
# STEP_TIMEOUT (seconds, default 600) to bound each step.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
device=""
out=./gpu_check
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --device=*) device=${1#--device=}; shift ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        *) out=$1; shift ;;
    esac
done
if [ -z "$device" ]; then
    device=$("$py" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi
case "$device" in cuda|cpu) ;; *) echo "error: --device must be cuda or cpu" >&2; exit 2 ;; esac
if [ "$device" = cuda ] && ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: --device cuda, but PyTorch sees no CUDA device (use --device cpu)" >&2
    exit 2
fi
full=$([ "$device" = cuda ] && echo 1 || echo 0)
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
mkdir -p "$out/logs"
steps_file="$out/steps.tsv"
: > "$steps_file"
ckpt=checkpoints/resnet18_fashion_mnist.pth
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

# step NAME COMMAND...: run it, log its output, record status and seconds.
step() {
    local name=$1; shift
    local log="$out/logs/$name.log" start end rc
    echo "== $name: $*" >&2
    start=$EPOCHREALTIME
    timeout "${STEP_TIMEOUT:-600}" "$@" > "$log" 2>&1
    rc=$?
    end=$EPOCHREALTIME
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN {print $end - $start}")" "$*" \
        >> "$steps_file"
    [ $rc -eq 0 ] || echo "   $name failed with status $rc (see $log)" >&2
}

# Training data: the Fashion-MNIST training split when this machine has it, else (the
# repository ships only the test split) the 10,000 test images standing in for it: this run
# checks that training works and how fast, not what it learns. The CPU form takes 512 images.
data="$out/fashion_mnist"
"$py" - "$data" "$full" <<'EOF'
import gzip, shutil, struct, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, ".")
from data import DEBIAN_FASHION_MNIST, read_idx

folder, full = Path(sys.argv[1]), sys.argv[2] == "1"
folder.mkdir(parents=True, exist_ok=True)
shipped = Path("data/FashionMNIST/raw")
train = DEBIAN_FASHION_MNIST if (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists() \
    else None
for split, source in (("train", train), ("t10k", shipped)):
    prefix = split if source is not None else "t10k"
    images = read_idx((source or shipped) / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx((source or shipped) / f"{prefix}-labels-idx1-ubyte.gz")
    keep = len(images) if full else 512
    for stem, array in (("images-idx3-ubyte", images[:keep]), ("labels-idx1-ubyte", labels[:keep])):
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        with gzip.open(folder / f"{split}-{stem}.gz", "wb") as f:
            f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
print("training images:", "Fashion-MNIST train split" if train else "the test split (stand-in)")
EOF

# Detector weights: the COCO weights when torch's cache has them, else random ones (no
# network here); the detection step then checks that it runs, not what it finds.
det_weights=()
if ! "$py" -c "import sys; sys.path.insert(0, '.'); import detection as d, torch.hub as h, os; \
sys.exit(not os.path.exists(os.path.join(h.get_dir(), 'checkpoints', d.WEIGHTS_FILE)))"; then
    "$py" -c "import sys, torch; sys.path.insert(0, '.'); import detection as d; \
torch.manual_seed(0); torch.save(d.build_detector().state_dict(), sys.argv[1])" \
        "$out/random_detector.pth"
    det_weights=(--det_weights "$out/random_detector.pth" --det_score_thresh 0.05)
fi

if [ $full = 1 ]; then
    step tests "$py" -m pytest -o addopts= -q -rs
    step train "$py" main.py --mode train --dataset fashion_mnist --data_dir "$data" \
        --num_epochs 3 --batch_size 512 --lr 0.2 --device cuda \
        --save_path "$out/train/ck.pth" --log_dir "$out/train/logs"
    if [ "$gpus" -gt 1 ]; then
        step train_torchrun "$py" -m torch.distributed.run --standalone --nproc_per_node "$gpus" \
            main.py --mode train --dataset fashion_mnist --data_dir "$data" --num_epochs 2 \
            --batch_size 256 --lr 0.2 --save_path "$out/torchrun/ck.pth" \
            --log_dir "$out/torchrun/logs"
    fi
    step heatmaps "$py" main.py --mode test --save_path $ckpt --vis all --vis_num 20 \
        --device cuda --out_dir "$out/heatmaps"
    step evaluate "$py" main.py --mode test --save_path $ckpt --vis gradcam,cam \
        --hidden_strategy zero --num_eval 500 --device cuda --out_dir "$out/evaluate"
    step detect "$py" main.py --det_img data/samples/astronaut.jpg "${det_weights[@]}" \
        --det_layer layer3,layer4 --device cuda --out_dir "$out/detect"
else
    step tests "$py" -m pytest -o addopts= -q -rs tests/test_cuda.py tests/test_runtime.py
    step train "$py" main.py --mode train --dataset fashion_mnist --data_dir "$data" \
        --num_epochs 1 --batch_size 64 --device cpu \
        --save_path "$out/train/ck.pth" --log_dir "$out/train/logs"
    step heatmaps "$py" main.py --mode test --save_path $ckpt --vis gradcam,cam --vis_num 4 \
        --device cpu --out_dir "$out/heatmaps"
    step evaluate "$py" main.py --mode test --save_path $ckpt --vis gradcam \
        --hidden_strategy zero --num_eval 4 --steps 10 --device cpu --out_dir "$out/evaluate"
    step detect "$py" main.py --det_img data/samples/astronaut.jpg "${det_weights[@]}" \
        --det_min_size 256 --device cpu --out_dir "$out/detect"
fi

# Every bench/ script with --device; the sizes are the full ones on CUDA, tiny on the CPU.
for bench in bench/*.py; do
    name=$(basename "$bench" .py)
    case "$name:$full" in
        bench_train:1) args=(--images 16384 --batch_size 512) ;;
        bench_train:0) args=(--images 256 --batch_size 64 --workers 0) ;;
        bench_evaluate:1) args=(--images 32) ;;
        bench_evaluate:0) args=(--images 1 --steps 10 --repeats 1) ;;
        bench_heatmaps:1) args=(--images 1024 --batch_size 256) ;;
        bench_heatmaps:0) args=(--images 8 --batch_size 8 --repeat 1) ;;
        bench_detection:1) args=() ;;
        bench_detection:0) args=(--min_size 256 --detections 2 --repeats 1) ;;
        bench_train_detector:1) args=(--scenes 512 --batch_size 32) ;;
        bench_train_detector:0) args=(--scenes 8 --batch_size 4) ;;
        bench_sharded_evaluate:1) args=(--images 64 --nproc "$gpus") ;;
        bench_sharded_evaluate:0) args=(--images 4 --steps 10) ;;
        bench_photos:0) args=(--arch resnet18 --batch 4 --repeat 1 --small 4 --large 12
                              --loop_images 8) ;;
        bench_peers:0) args=(--repeat 1 --methods gradcam,layercam) ;;
        bench_explorer:0) args=(--repeats 1) ;;
        bench_rollout:0) args=(--image_size 64 --batch 2 --repeats 1) ;;
        *) args=() ;;
    esac
    step "$name" "$py" "$bench" --device "$device" "${args[@]}"
done

# The summary: every step's status, time and last lines (the benches print their ratios
# last), the training epochs, the machine.
"$py" - "$out" "$device" <<'EOF'
import json, platform, sys
from pathlib import Path
import torch

out, device = Path(sys.argv[1]), sys.argv[2]
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds, command = line.split("\t", 3)
    log = (out / "logs" / f"{name}.log").read_text(errors="replace").replace("\r", "\n")
    keep = [s.strip() for s in log.splitlines() if s.strip() and "%|" not in s]
    steps.append({"step": name, "ok": rc == "0", "status": int(rc),
                  "seconds": round(float(seconds), 1), "command": command,
                  "last_lines": keep[-8:]})
metrics = out / "train" / "logs" / "metrics.csv"
if metrics.exists():
    rows = metrics.read_text().splitlines()[1:]
    steps.append({"step": "train_epochs", "ok": True, "status": 0, "seconds": 0.0,
                  "command": str(metrics), "last_lines": rows})
cpu = next((s.split(":", 1)[1].strip() for s in Path("/proc/cpuinfo").read_text().splitlines()
            if s.startswith("model name")), platform.machine())
summary = {"device": torch.cuda.get_device_name(0) if device == "cuda" else cpu,
           "mode": "full" if device == "cuda" else "reduced (CPU)", "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
           "all_ok": all(s["ok"] for s in steps),
           "total_seconds": round(sum(s["seconds"] for s in steps), 1), "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary))
EOF
