#!/usr/bin/env bash
# Rebuild every figure and number in README.md from the shipped Fashion-MNIST checkpoint,
# offline, into one folder (default ./figures), and refresh the copies under docs/.
#
#   scripts/reproduce_figures.sh [OUT_DIR]
#
# About 25 minutes on 2 CPU cores for the figures that came first (most of it deletion/
# insertion: 4 strategies x 5 methods x 100 images x 202 forward passes), plus the leaderboard
# of every method at two layers (about 2 hours on a busy 2-core machine, most of it Score-CAM's
# 768 forward passes per image and the curves) and the sanity check. Set PYTHON to use another
# interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-./figures}
ckpt=checkpoints/resnet18_fashion_mnist.pth
py=${PYTHON:-python}

run() {
    echo "+ python main.py $*"
    "$py" main.py "$@"
}

mkdir -p "$out/accuracy" "$out/deletion_insertion"
run --mode test --save_path "$ckpt" --vis none --out_dir "$out/accuracy" \
    | tee "$out/accuracy/test_accuracy.txt"
run --mode test --save_path "$ckpt" --vis none --precision fp32 --out_dir "$out/accuracy/fp32" \
    | tee "$out/accuracy/test_accuracy_fp32.txt"

for method in cam gradcam gradcampp; do
    run --mode test --save_path "$ckpt" --vis "$method" --vis_num 10 --out_dir "$out/heatmaps"
done
run --mode test --save_path "$ckpt" --vis gradcam --target_layer layer3 --vis_num 10 \
    --out_dir "$out/heatmaps_layer3"

for strategy in zero gray mean blur; do
    run --mode test --save_path "$ckpt" --vis cam,gradcam,gradcampp --hidden_strategy "$strategy" \
        --num_eval 100 --out_dir "$out/deletion_insertion" \
        | tee "$out/deletion_insertion/log_$strategy.txt"
done

# The shipped detector on the shipped test scenes: evaluation only (training: README,
# "The trained detector that ships here").
det=checkpoints/fasterrcnn_fashion_scenes.pth
mkdir -p "$out/detection"
run --det_vis --det_weights "$det" --voc_path data/fashion_scenes --det_num 300 \
    --det_layer layer2,layer3,layer4 --out_dir "$out/detection" \
    | tee "$out/detection/scene_metrics.txt"
run --det_vis --det_weights "$det" --voc_path data/fashion_scenes --det_num 300 \
    --det_layer layer2,layer3,layer4 --det_method layercam --out_dir "$out/detection_layercam" \
    | tee "$out/detection/scene_metrics_layercam.txt"
for method in gradcam layercam; do
    run --det_vis --det_weights "$det" --voc_path data/fashion_scenes --det_num 4 \
        --det_layer layer2,layer3,layer4 --det_method "$method" --det_per_box \
        --out_dir "$out/detection_per_box_$method"
done

mkdir -p "$out/leaderboard"
run --mode test --save_path "$ckpt" --vis all --target_layer layer3,layer4 \
    --hidden_strategy zero,blur --num_eval 100 --steps 20 --out_dir "$out/leaderboard" \
    | tee "$out/leaderboard/log.txt"
mkdir -p "$out/sanity_check"
run --mode test --save_path "$ckpt" --sanity --target_layer layer4 --vis_num 8 \
    --vis cam,gradcam,gradcampp,xgradcam,hirescam,layercam,ablationcam,eigencam \
    --out_dir "$out/sanity_check" | tee "$out/sanity_check/log.txt"

mkdir -p docs
cp "$out/detection/detection/detections_grid.png" docs/detections_grid.png
for method in gradcam layercam; do
    cp "$out/detection_per_box_$method/detection/000001_boxes_by_layer.png" \
        "docs/detection_boxes_by_layer_$method.png"
done
for method in cam gradcam gradcampp; do
    cp "$out/heatmaps/$method/${method}_grid.png" "docs/${method}_grid.png"
done
cp "$out/heatmaps_layer3/gradcam/gradcam_grid.png" docs/gradcam_layer3_grid.png
cp "$out/deletion_insertion/comparison_zero.png" docs/comparison_zero.png
cp "$out/deletion_insertion/results_gradcam_zero.png" docs/results_gradcam_zero.png
cp "$out/accuracy/confusion_matrix.png" docs/confusion_matrix.png
cp "$out/leaderboard/ranking_zero.png" docs/ranking_zero.png
cp "$out/leaderboard/ranking_blur.png" docs/ranking_blur.png
cp "$out/sanity_check/sanity/sanity.png" docs/sanity.png
echo "Figures in $out; README copies in docs/"
