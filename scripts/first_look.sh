#!/usr/bin/env bash
# The main job: what the tool is for, on what ships, offline, in minutes. Test accuracy of the
# shipped classifier; heatmaps of three methods; a small leaderboard with its baselines; the
# sanity check; the scene detector's detections with their maps at three layers; D-RISE on
# the same scene. Each part writes its own folder under OUT_DIR (default ./first_look), and
# the last line names the reports to open.
#
#   scripts/first_look.sh [OUT_DIR]          (PYTHON=... for another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-./first_look}
py=${PYTHON:-python}
started=$SECONDS

run() {   # run PART FLAGS...: one job of main.py into OUT_DIR/PART, with its wall time
    local part=$1
    shift
    local begun=$SECONDS
    echo "+ python main.py $* --out_dir $out/$part"
    "$py" main.py "$@" --out_dir "$out/$part"
    echo "== $part took $(( SECONDS - begun )) s"
}

run accuracy --save_path checkpoints/resnet18_fashion_mnist.pth
run heatmaps --save_path checkpoints/resnet18_fashion_mnist.pth --vis gradcam,layercam,scorecam --vis_num 16
run leaderboard --save_path checkpoints/resnet18_fashion_mnist.pth --vis gradcam,layercam,eigencam --target_layer layer3,layer4 --hidden_strategy zero --num_eval 30 --steps 20
run sanity --save_path checkpoints/resnet18_fashion_mnist.pth --sanity --vis gradcam,layercam --vis_num 4
run detection --det_img data/fashion_scenes/JPEGImages/000001.png --det_weights checkpoints/fasterrcnn_fashion_scenes.pth --det_method layercam --det_layer layer2,layer3,layer4 --det_per_box
run drise --det_img data/fashion_scenes/JPEGImages/000001.png --det_weights checkpoints/fasterrcnn_fashion_scenes.pth --det_method drise --det_masks 300

echo "== the main job took $(( SECONDS - started )) s"
echo "Reports: $(ls "$out"/*/report.html 2>/dev/null | tr '\n' ' ')"
