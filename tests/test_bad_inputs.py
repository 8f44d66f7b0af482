"""Bad input, one row each: ``main(argv)`` in-process must refuse it in one line and lose nothing.

For every row it asserts: the exit code (2 for bad input, 3 for a training run stopped on a
non-finite loss), exactly one visible line on stderr starting ``error:`` that names the problem,
no exception escaping ``main``, nothing created in the output folders, the row's own
checkpoint (the one training would replace) byte-identical after, and the shared input files
neither rewritten nor replaced (same size, inode and modification time).

Each row is ``(id, argv, exit code, fragment of the error line)``. ``argv`` may use ``{w}``
(a folder of prepared bad and good inputs, shared by all rows) and ``{o}`` (the row's own
folder, holding a copy of a good checkpoint as ``ck.pth``). Every row runs with
``--data_dir {w}/fm --out_dir {o}/out --log_dir {o}/logs --save_path {o}/ck.pth`` in front of
its own flags, so a row overrides them by naming them again. To add a case for a new flag,
add a row; to add a new kind of bad file, write it in ``world``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import pickle
import shutil
import socket
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jobs
import main
import train_detector
import validation
from tinydata import idx_bytes, random_checkpoint, write_fashion_mnist
from validation import NUMBERS

BAD = 2
STOPPED = 3
ROOT = Path(__file__).resolve().parent.parent
SCENES = ROOT / "data" / "fashion_scenes"

CASES: list[tuple[str, str, int, str]] = [
    # ---- flags: parse errors are one line pointing to --help, not argparse's usage block
    ("unknown-flag", "--frobnicate 3", BAD, "--help"),
    ("bad-choice-mode", "--mode bogus", BAD, "--mode"),
    ("bad-choice-dataset", "--mode train --dataset imagenet", BAD, "--dataset"),
    ("not-an-int", "--batch_size abc", BAD, "--batch_size"),
    ("not-a-float", "--mode train --lr fast", BAD, "--lr"),
    ("missing-value", "--mode test --vis_num", BAD, "--vis_num"),
    # ---- flags: finite numbers in range (validation.NUMBERS)
    ("lr-nan", "--mode train --lr nan", BAD, "--lr"),
    ("lr-inf", "--mode train --lr inf", BAD, "--lr"),
    ("lr-negative", "--mode train --lr -0.1", BAD, "--lr"),
    ("lr-zero", "--mode train --lr 0", BAD, "--lr"),
    ("lr-1e6", "--mode train --lr 1e6", BAD, "--lr"),
    ("weight-decay-nan", "--mode train --weight_decay nan", BAD, "--weight_decay"),
    ("weight-decay-negative", "--mode train --weight_decay -1", BAD, "--weight_decay"),
    ("label-smoothing-2", "--mode train --label_smoothing 2", BAD, "--label_smoothing"),
    ("label-smoothing-nan", "--mode train --label_smoothing nan", BAD, "--label_smoothing"),
    ("seed-negative", "--mode train --seed -1", BAD, "--seed"),
    ("seed-2-32", "--mode train --seed 4294967296", BAD, "--seed"),
    ("batch-size-0", "--mode train --batch_size 0", BAD, "--batch_size"),
    ("num-epochs-0", "--mode train --num_epochs 0", BAD, "--num_epochs"),
    ("vis-num-0", "--vis gradcam --vis_num 0", BAD, "--vis_num"),
    ("steps-0", "--vis cam --hidden_strategy zero --steps 0", BAD, "--steps"),
    ("num-eval-negative", "--vis cam --hidden_strategy zero --num_eval -3", BAD, "--num_eval"),
    ("cam-batch-size-0", "--vis scorecam --cam_batch_size 0", BAD, "--cam_batch_size"),
    ("eval-batch-size-0", "--vis cam --hidden_strategy zero --eval_batch_size 0", BAD,
     "--eval_batch_size"),
    ("det-score-thresh-1.5", "--det_vis --det_score_thresh 1.5", BAD, "--det_score_thresh"),
    ("det-score-thresh-nan", "--det_vis --det_score_thresh nan", BAD, "--det_score_thresh"),
    ("det-max-0", "--det_vis --det_max 0", BAD, "--det_max"),
    ("det-num-0", "--det_vis --det_num 0", BAD, "--det_num"),
    ("det-min-size-10", "--det_vis --det_min_size 10", BAD, "--det_min_size"),
    # ---- flags that cannot go together
    ("strategy-without-vis", "--hidden_strategy zero", BAD, "--vis"),
    ("image-with-target-gt", "--image {w}/good.png --target gt", BAD, "--target gt"),
    ("panel-format-without-vis", "--image {w}/good.png --panel_format jpg", BAD,
     "--panel_format"),
    ("panel-format-gif", "--vis gradcam --panel_format gif", BAD, "--panel_format"),
    ("panel-format-detection", "--det_vis --panel_format jpg", BAD, "--panel_format"),
    # ---- devices: only what this PyTorch build can use
    ("device-mps", "--device mps", BAD, "--device mps"),
    ("device-meta", "--device meta", BAD, "--device meta"),
    ("device-cuda-99", "--device cuda:99", BAD, "--device cuda:99"),
    ("device-unknown", "--device toaster", BAD, "toaster"),
    ("device-train", "--mode train --device meta", BAD, "--device meta"),
    # ---- output paths: checked before any work
    ("out-dir-is-file", "--out_dir {w}/afile", BAD, "--out_dir"),
    ("out-dir-under-file", "--out_dir {w}/afile/sub", BAD, "--out_dir"),
    ("out-dir-is-file-vis", "--vis gradcam --out_dir {w}/afile", BAD, "--out_dir"),
    ("out-dir-is-file-eval", "--vis cam --hidden_strategy zero --out_dir {w}/afile", BAD,
     "--out_dir"),
    ("out-dir-is-file-image", "--image {w}/good.png --vis cam --out_dir {w}/afile", BAD,
     "--out_dir"),
    ("out-dir-is-file-det", "--det_img {w}/good.png --out_dir {w}/afile", BAD, "--out_dir"),
    ("out-dir-name-too-long", "--out_dir {o}/" + "x" * 300, BAD, "--out_dir"),
    ("log-dir-is-file", "--mode train --log_dir {w}/afile", BAD, "--log_dir"),
    ("log-dir-under-file", "--mode train --log_dir {w}/afile/logs", BAD, "--log_dir"),
    ("save-path-parent-is-file", "--mode train --save_path {w}/afile/ck.pth", BAD, "--save_path"),
    ("save-path-is-folder", "--mode train --save_path {o}", BAD, "--save_path"),
    ("save-path-empty", ["--mode", "train", "--save_path", ""], BAD, "--save_path"),
    # ---- input paths
    ("data-dir-is-file", "--data_dir {w}/afile", BAD, "--data_dir"),
    ("data-dir-is-file-train", "--mode train --data_dir {w}/afile", BAD, "--data_dir"),
    ("image-missing", "--image {w}/nope.png", BAD, "nope.png"),
    ("det-img-missing", "--det_img {w}/nope.png", BAD, "nope.png"),
    ("det-weights-missing", "--det_img {w}/good.png --det_weights {w}/nope.pth", BAD, "nope.pth"),
    ("voc-missing", "--det_vis --voc_path {w}/nope.tar", BAD, "nope.tar"),
    # ---- checkpoints
    ("ckpt-missing", "--save_path {w}/nope.pth", BAD, "not found"),
    ("ckpt-text", "--save_path {w}/ck_text.pth", BAD, "text file"),
    ("ckpt-truncated", "--save_path {w}/ck_truncated.pth", BAD, "ck_truncated.pth"),
    ("ckpt-garbage", "--save_path {w}/ck_garbage.pth", BAD, "ck_garbage.pth"),
    ("ckpt-code-pickle", "--save_path {w}/ck_pickle.pth", BAD, "ck_pickle.pth"),
    ("ckpt-list", "--save_path {w}/ck_list.pth", BAD, "no model weights"),
    ("ckpt-other-arch", "--save_path {w}/ck_arch.pth", BAD, "vgg16"),
    ("ckpt-class-count", "--save_path {w}/ck_classes5.pth", BAD, "classes"),
    ("ckpt-classes-int", "--save_path {w}/ck_classes_int.pth", BAD, "classes"),
    ("ckpt-state-dict-int", "--save_path {w}/ck_msd_int.pth", BAD, "model_state_dict"),
    ("ckpt-std-zero", "--save_path {w}/ck_std0.pth", BAD, "std"),
    ("ckpt-mean-text", "--save_path {w}/ck_mean_text.pth", BAD, "mean"),
    ("ckpt-input-size", "--save_path {w}/ck_input_size.pth", BAD, "input_size"),
    ("ckpt-nan-weights", "--save_path {w}/ck_nan.pth", BAD, "not finite"),
    ("ckpt-inf-weights", "--vis gradcam --save_path {w}/ck_inf.pth", BAD, "not finite"),
    ("ckpt-wrong-dataset", "--save_path {w}/ck.pth --dataset cifar10", BAD, "fashion_mnist"),
    # ---- images, for --image and --det_img (data.open_image)
    ("image-text", "--image {w}/text.png", BAD, "text.png"),
    ("image-truncated", "--image {w}/truncated.png", BAD, "truncated.png"),
    ("image-bomb", "--image {w}/bomb.png", BAD, "bomb.png"),
    ("image-float-out-of-range", "--image {w}/float_wide.tif", BAD, "float_wide.tif"),
    ("image-float-nan", "--image {w}/float_nan.tif", BAD, "float_nan.tif"),
    ("det-img-text", "--det_img {w}/text.png", BAD, "text.png"),
    ("det-img-float-out-of-range", "--det_img {w}/float_wide.tif", BAD, "float_wide.tif"),
    ("det-img-float-nan", "--det_img {w}/float_nan.tif", BAD, "float_nan.tif"),
    # ---- datasets: checked when loaded
    ("gz-corrupt-stream", "--data_dir {w}/fm_stream", BAD, "t10k-images"),
    ("gz-bad-crc", "--data_dir {w}/fm_crc", BAD, "t10k-images"),
    ("idx-truncated", "--data_dir {w}/fm_truncated", BAD, "truncated"),
    ("idx-bad-header", "--data_dir {w}/fm_header", BAD, "header"),
    ("labels-10", "--data_dir {w}/fm_label10", BAD, "label 10"),
    ("labels-10-eval", "--vis cam --hidden_strategy zero --data_dir {w}/fm_label10", BAD,
     "label 10"),
    ("labels-miscounted", "--data_dir {w}/fm_count", BAD, "do not belong together"),
    ("labels-10-train", "--mode train --dataset fashion_mnist --data_dir {w}/fm_label10", BAD,
     "label 10"),
    ("cifar-missing", "--mode train --dataset cifar10 --data_dir {w}/empty", BAD, "CIFAR-10"),
    # ---- layers and methods
    ("layer-unknown", "--vis gradcam --target_layer layer9", BAD, "layer9"),
    ("layer-fc", "--vis gradcam --target_layer fc --vis_num 2", BAD, "layer4"),
    ("layer-fc-image", "--image {w}/good.png --vis gradcam --target_layer fc", BAD, "layer4"),
    ("cam-not-layer4", "--vis cam --target_layer layer3", BAD, "layer4"),
    ("method-unknown", "--vis lime", BAD, "lime"),
    ("det-layer-unknown", "--det_img {w}/good.png --det_layer layer9", BAD, "layer9"),
    ("det-arch-unknown", "--det_img {w}/good.png --det_arch retina", BAD,
     "retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2"),
    ("det-layer-not-of-the-arch",
     "--det_img {w}/good.png --det_arch ssd300_vgg16 --det_layer layer4", BAD,
     "stride8, stride16, stride32"),
    ("det-min-size-under-ssd300s",
     "--det_img {w}/good.png --det_arch ssd300_vgg16 --det_min_size 200", BAD, "--det_min_size"),
    ("det-arch-with-scene-detector",
     "--det_img {w}/good.png --det_weights {w}/det.pth --det_arch retinanet_resnet50_fpn", BAD,
     "--det_arch"),
    ("det-arch-with-vis", "--vis gradcam --det_arch fcos_resnet50_fpn", BAD, "--det_arch"),
    # ---- the scene detector: memory bounded, training and scene flags, its checkpoints
    ("det-min-size-100000", "--det_vis --det_min_size 100000", BAD, "--det_min_size"),
    ("det-scenes-0", "--mode train --det_vis --det_scenes 0", BAD, "--det_scenes"),
    ("resume-classifier", "--mode train --resume", BAD, "--resume"),
    ("resume-without-state", "--mode train --det_vis --resume", BAD, "ck.resume.pth"),
    ("make-scenes-into-file", "--make_scenes {w}/afile", BAD, "--make_scenes"),
    ("det-weights-scene-without-meta",
     "--det_img {w}/good.png --det_weights {w}/det_nometa.pth", BAD, "cannot be rebuilt"),
    # ---- datasets and images
    ("idx-6-bytes", "--data_dir {w}/fm_6bytes", BAD, "truncated"),
    ("idx-dims-overflow", "--data_dir {w}/fm_overflow", BAD, "truncated or corrupt"),
    ("idx-20x20", "--data_dir {w}/fm_20px", BAD, "28x28"),
    ("idx-20x20-train", "--mode train --dataset fashion_mnist --data_dir {w}/fm_20px", BAD,
     "28x28"),
    ("image-lab-tiff", "--image {w}/lab.tif", BAD, "L*a*b*"),
    ("det-img-lab-tiff", "--det_img {w}/lab.tif", BAD, "L*a*b*"),
    # ---- a VOC-style set's image list names files inside the set, as UTF-8
    ("voc-id-escapes-the-set", "--det_vis --voc_path {w}/voc_escape --det_weights {w}/det.pth",
     BAD, "'../../outside/stolen' is not an image id"),
    ("voc-list-not-utf8", "--det_vis --voc_path {w}/voc_latin1 --det_weights {w}/det.pth", BAD,
     "not UTF-8"),
    ("voc-path-fifo", "--det_vis --voc_path {w}/fifo", BAD, "--voc_path"),
    ("voc-path-link-loop", "--det_vis --voc_path {w}/loop", BAD, "loop of symbolic links"),
    ("voc-listed-id-missing", "--det_vis --voc_path {w}/voc_missing --det_weights {w}/det.pth",
     BAD, "without an annotation or an image"),
    # ---- one rule for outputs (a regular file or nothing yet, in a folder that can
    # be created), refused before any work with the flag named
    ("save-path-dev-full", "--mode train --save_path /dev/full", BAD, "--save_path /dev/full"),
    ("save-path-fifo", "--mode train --save_path {w}/fifo", BAD, "--save_path"),
    ("save-path-dangling-link", "--mode train --save_path {w}/dangling", BAD, "--save_path"),
    ("save-path-link-loop", "--mode train --save_path {w}/loop", BAD, "--save_path"),
    ("det-state-is-folder", "--mode train --det_vis --save_path {w}/det.pth", BAD,
     "training state"),
    ("out-dir-proc", "--out_dir /proc/h19_out", BAD, "--out_dir /proc/h19_out"),
    ("out-dir-dangling-link", "--out_dir {w}/dangling", BAD, "--out_dir"),
    ("out-dir-link-loop", "--out_dir {w}/loop", BAD, "--out_dir"),
    ("out-dir-under-link-loop", "--out_dir {w}/loop/sub", BAD, "--out_dir"),
    ("out-dir-device", "--out_dir /dev/null", BAD, "--out_dir"),
    ("out-dir-empty", ["--out_dir", ""], BAD, "--out_dir"),
    ("log-dir-empty", ["--mode", "train", "--log_dir", ""], BAD, "--log_dir"),
    ("log-dir-dangling-link", "--mode train --log_dir {w}/dangling", BAD, "--log_dir"),
    ("make-scenes-device", "--make_scenes /dev/null", BAD, "--make_scenes"),
    ("det-img-empty", ["--det_img", ""], BAD, "--det_img"),
    ("make-scenes-empty", ["--make_scenes", ""], BAD, "--make_scenes"),
    # ---- inputs that are not files: said what they are
    ("ckpt-folder", "--save_path {w}/empty", BAD, "is a folder"),
    ("ckpt-fifo", "--save_path {w}/fifo", BAD, "FIFO"),
    ("ckpt-link-loop", "--save_path {w}/loop", BAD, "loop of symbolic links"),
    ("ckpt-dangling-link", "--save_path {w}/dangling", BAD, "missing target"),
    ("det-weights-folder", "--det_img {w}/good.png --det_weights {w}/empty", BAD, "a folder"),
    ("image-fifo", "--image {w}/fifo", BAD, "FIFO"),
    # ---- one table of checkpoint fields (model.FIELDS), classifier and detector alike
    ("ckpt-int-weights", "--vis gradcam --save_path {w}/ck_int_weights.pth", BAD,
     "not floating point"),
    ("ckpt-std-1e-300", "--vis gradcam --save_path {w}/ck_std_tiny.pth", BAD, "'std'"),
    ("ckpt-acc-tensor", "--save_path {w}/ck_acc_tensor.pth", BAD, "'acc' is a tensor"),
    ("ckpt-input-size-tensor", "--save_path {w}/ck_size_tensor.pth", BAD, "'input_size'"),
    ("ckpt-epoch-float", "--save_path {w}/ck_epoch_float.pth", BAD, "'epoch'"),
    ("ckpt-mean-nan", "--save_path {w}/ck_mean_nan.pth", BAD, "'mean'"),
    ("det-fpn-negative", "--det_img {w}/good.png --det_weights {w}/det_fpn_negative.pth", BAD,
     "'fpn_channels'"),
    ("det-score-thresh-text", "--det_img {w}/good.png --det_weights {w}/det_thresh_text.pth",
     BAD, "'score_thresh'"),
    ("det-anchor-sizes-empty", "--det_img {w}/good.png --det_weights {w}/det_anchors_empty.pth",
     BAD, "'anchor_sizes'"),
    ("det-anchor-levels-3", "--det_img {w}/good.png --det_weights {w}/det_anchors_3.pth", BAD,
     "'anchor_sizes'"),
    ("det-std-tensor", "--det_img {w}/good.png --det_weights {w}/det_std_tensor.pth", BAD,
     "'std'"),
    ("det-classes-count", "--det_img {w}/good.png --det_weights {w}/det_classes_int.pth", BAD,
     "'classes'"),
    # ---- one rule for flags the chosen job does not read (validation.JOBS)
    ("image-with-det-img", "--det_img {w}/good.png --image {w}/good.png", BAD, "--image"),
    ("image-with-train", "--mode train --image {w}/good.png", BAD, "--image"),
    ("vis-with-train", "--mode train --vis gradcam", BAD, "--vis"),
    ("make-scenes-with-train", "--mode train --make_scenes {o}/scenes", BAD, "--make_scenes"),
    ("voc-path-with-det-img", "--det_img {w}/good.png --voc_path {w}/nope.tar", BAD,
     "--voc_path"),
    ("det-layer-with-vis", "--vis gradcam --det_layer layer3", BAD, "--det_layer"),
    ("lr-with-test", "--lr 0.5", BAD, "--lr"),
    ("steps-without-strategy", "--vis cam --steps 5", BAD, "--steps"),
    ("num-eval-with-image", "--image {w}/good.png --vis cam --num_eval 3", BAD, "--num_eval"),
    ("det-scenes-with-det-img", "--det_img {w}/good.png --det_scenes 10", BAD, "--det_scenes"),
    # ---- models from anywhere
    ("arch-unknown", "--arch resnet5O --image {w}/good.png --vis gradcam", BAD, "resnet50"),
    ("weights-do-not-fit", "--arch resnet18 --weights {w}/sd_tiny.pth --image {w}/good.png",
     BAD, "does not fit arch resnet18"),
    ("model-raises", "--model {w}/raises.py:build --image {w}/good.png", BAD, "boom"),
    ("model-not-a-module", "--model {w}/notmodule.py:build --image {w}/good.png", BAD,
     "not a torch.nn.Module"),
    ("model-no-function", "--model {w}/raises.py --image {w}/good.png", BAD, "FILE.py:FUNCTION"),
    ("model-file-missing", "--model {w}/nope.py:build --image {w}/good.png", BAD, "not found"),
    ("class-folder-unknown", "--arch resnet18 --data_dir {w}/fold", BAD, "'unicorn'"),
    ("image-dir-empty", "--arch resnet18 --image_dir {w}/empty", BAD, "--image_dir"),
    ("image-dir-missing", "--arch resnet18 --image_dir {w}/nope", BAD, "--image_dir"),
    ("target-class-unknown", "--arch resnet18 --image {w}/good.png --vis gradcam --target unicorn",
     BAD, "'unicorn'"),
    ("target-class-without-images", "--vis gradcam --target Shirt", BAD, "--target CLASS"),
    ("target-layer-auto-no-map",
     "--model {w}/mlp.py:build --input_size 16 --image {w}/good.png --vis gradcam", BAD,
     "no layer to explain"),
    ("mean-two-numbers", "--arch resnet18 --image {w}/good.png --mean 0.5,0.5", BAD, "--mean"),
    ("std-zero", "--arch resnet18 --image {w}/good.png --std 0.2,0,0.2", BAD, "--std"),
    ("input-size-tiny", "--arch resnet18 --image {w}/good.png --input_size 2", BAD,
     "--input_size"),
    ("image-and-image-dir", "--image {w}/good.png --image_dir {w}/fold", BAD, "--image_dir"),
    ("image-dir-without-checkpoint", "--image_dir {w}/fold --save_path {o}/none.pth", BAD,
     "checkpoint not found"),
    # ---- one path for every classifier: its flags apply to each model or are refused
    ("ckpt-input-size-on-its-test-split", "--vis gradcam --input_size 64", BAD,
     "--input_size 64: the fashion_mnist test images are 32 px"),
    ("ckpt-classes-of-another-count", "--vis gradcam --classes {w}/three.txt", BAD,
     "--classes names 3 classes"),
    ("model-and-arch", "--model {w}/raises.py:build --arch resnet50 --image {w}/good.png",
     BAD, "use one or the other"),
    ("list-layers-batch-size", "--list_layers --batch_size 7", BAD, "--batch_size"),
    ("ckpt-dataset-contradicted", "--dataset cifar10 --vis gradcam", BAD, "fashion_mnist"),
    ("save-path-of-another-arch", "--save_path {w}/notcifar.pth", BAD,
     "arch resnet50, not resnet18_cifar"),
    ("det-train-from-classifier", "--mode train --det_vis --det_weights {w}/ck.pth", BAD,
     "is not a 'fasterrcnn_resnet18_fpn' checkpoint"),
    ("det-train-resume-and-weights", "--mode train --det_vis --resume --det_weights {w}/ck.pth",
     BAD, "one or the other"),
    ("det-train-weights-missing", "--mode train --det_vis --det_weights {w}/nope.pth", BAD,
     "not found"),
    # ---- fine-tuning on a folder
    ("finetune-no-val", "--mode train --arch resnet18 --input_size 32 --data_dir {w}/fold", BAD,
     "no validation images"),
    ("finetune-one-class", "--mode train --arch resnet18 --data_dir {w}/fold/unicorn", BAD,
     "at least two"),
    ("finetune-folder-missing", "--mode train --arch resnet18 --data_dir {w}/nope", BAD,
     "--data_dir"),
    ("finetune-dataset-flag", "--mode train --arch resnet18 --dataset cifar10", BAD, "--dataset"),
    ("val-fraction-one", "--mode train --arch resnet18 --val_fraction 1", BAD, "--val_fraction"),
    ("val-fraction-unused", "--mode train --val_fraction 0.2", BAD, "--val_fraction"),
    ("finetune-cifar-arch", "--mode train --weights {w}/ck.pth --data_dir {w}/ftree", BAD,
     "resnet18_cifar"),
    ("finetune-not-a-module", "--mode train --model {w}/notmodule.py:build --data_dir {w}/ftree",
     BAD, "not a torch.nn.Module"),
    ("finetune-classes-file-missing",
     "--mode train --arch resnet18 --data_dir {w}/ftree --classes {w}/nope.txt", BAD, "--classes"),
    # ---- no code runs from a weights file, whatever reads it
    ("hub-cache-pickle", "--arch resnet18 --weights DEFAULT --image {w}/good.png", BAD,
     "is not the file of ResNet18_Weights.IMAGENET1K_V1"),
    ("hub-cache-pickle-list-layers", "--arch resnet18 --weights DEFAULT --list_layers", BAD,
     "delete it to download it again"),
    ("det-weights-pickle", "--det_img {w}/good.png --det_weights {w}/ck_pickle.pth", BAD,
     "ck_pickle.pth"),
    # ---- no silent numbers, no silent guesses
    ("model-nan-weight", "--model {w}/nanmodel.py:build --image {w}/good.png --vis gradcam", BAD,
     "not finite"),
    ("model-inf-buffer", "--model {w}/nanmodel.py:build_inf --image {w}/good.png", BAD,
     "not finite"),
    ("model-nan-weight-list-layers", "--model {w}/nanmodel.py:build --list_layers", BAD,
     "not finite"),
    ("model-exits-0", "--model {w}/exits.py:build --image {w}/good.png", BAD, "sys.exit(0)"),
    ("model-exits-3", "--model {w}/exits.py:build3 --image {w}/good.png", BAD, "sys.exit(3)"),
    ("model-exits-at-import", "--model {w}/exits_import.py:build --image {w}/good.png", BAD,
     "sys.exit(0)"),
    ("model-exits-finetune", "--mode train --model {w}/exits.py:build --data_dir {w}/ftree", BAD,
     "sys.exit(0)"),
    ("finetune-val-fraction-with-val-folder",
     "--mode train --arch resnet18 --input_size 32 --data_dir {w}/splits --val_fraction 0.5",
     BAD, "--val_fraction 0.5"),
    ("finetune-default-val-fraction-given-with-val-folder",
     "--mode train --arch resnet18 --input_size 32 --data_dir {w}/splits --val_fraction 0.1",
     BAD, "--val_fraction 0.1"),
    ("finetune-split-folders-without-train",
     "--mode train --arch resnet18 --input_size 32 --data_dir {w}/splits_notrain", BAD,
     "no train/"),
    ("image-dir-split-folders-without-train",
     "--arch resnet18 --data_dir {w}/splits_notrain --vis gradcam", BAD, "no train/"),
    ("layer-relu-called-twice",
     "--arch resnet18 --image {w}/good.png --vis gradcam --target_layer layer4.1.relu", BAD,
     "runs more than once"),
    ("layer-relu-called-twice-cam",
     "--arch resnet18 --image {w}/good.png --vis cam --target_layer layer4.1.relu", BAD,
     "layer4.1.relu"),
    ("layer-relu-called-twice-eigencam",
     "--arch resnet18 --image {w}/good.png --vis eigencam --target_layer layer4.1.relu", BAD,
     "runs more than once"),
    # ---- tracebacks turned into one line
    ("model-torchscript", "--model {w}/scripted.py:build --image {w}/good.png", BAD, "TorchScript"),
    ("vit-input-size-64", "--arch vit_b_16 --input_size 64 --image {w}/good.png", BAD,
     "--input_size 64"),
    ("inception-input-size-32-list-layers", "--arch inception_v3 --input_size 32 --list_layers",
     BAD, "--input_size 32"),
    # ---- vision transformers: token layers read as maps
    ("vit-input-size-64-list-layers", "--arch vit_b_16 --input_size 64 --list_layers", BAD,
     "--input_size 64"),
    ("tokens-no-grid-auto",
     "--model {w}/oddgrid.py:build --input_size 32 --image {w}/good.png --vis gradcam", BAD,
     "give the patch grid as --token_grid"),
    ("tokens-no-grid-target-layer",
     ("--model {w}/oddgrid.py:build --input_size 32 --image {w}/good.png --vis gradcam "
      "--target_layer norm1"), BAD, "--target_layer norm1 gives tokens [1, 33, 16]"),
    ("tokens-grid-does-not-fit",
     ("--model {w}/oddgrid.py:build --input_size 32 --image {w}/good.png --vis gradcam "
      "--token_grid 6x6"), BAD, "--token_grid 6x6 is 36 patch tokens, but the layer has 33"),
    ("tokens-grid-not-a-grid", "--arch vit_b_16 --list_layers --token_grid 14by14", BAD,
     "--token_grid '14by14'"),
    ("tokens-grid-unused", "--mode test --arch vit_b_16 --token_grid 14x14", BAD, "--token_grid"),
    # ---- attention rollout: vision transformers only, every block
    ("rollout-on-a-cnn", "--arch resnet18 --image {w}/good.png --vis rollout", BAD,
     "--vis rollout: it reads the attention blocks"),
    ("rollout-on-a-cnn-leaderboard",
     "--arch resnet18 --image {w}/good.png --vis gradcam,rollout --hidden_strategy zero", BAD,
     "--vis rollout"),
    ("rollout-with-a-target-layer",
     ("--arch vit_b_16 --image {w}/good.png --vis rollout --target_layer "
      "encoder.layers.encoder_layer_3"), BAD, "--target_layer encoder.layers.encoder_layer_3"),
    ("finetune-batch-size-1-batchnorm",
     "--mode train --arch resnet18 --input_size 32 --data_dir {w}/ftree --batch_size 1", BAD,
     "batch_size 1"),
    ("ckpt-meta-tensor", "--save_path {w}/ck_meta.pth", BAD, "meta tensor"),
    ("ckpt-meta-tensor-vis", "--vis gradcam --save_path {w}/ck_meta.pth", BAD, "meta tensor"),
    ("model-meta-tensor", "--model {w}/metamodel.py:build --image {w}/good.png", BAD,
     "meta tensor"),
    # ---- the error line starts a line, after a progress bar too
    ("finetune-unreadable-image-mid-epoch",
     ("--mode train --arch resnet18 --input_size 32 --data_dir {w}/fbroken --batch_size 2 "
      "--num_epochs 1"), BAD, "broken.png"),
]


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG header claiming ``width x height`` pixels (a decompression bomb for PIL)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


class _Pwned:
    def __reduce__(self):
        return (print, ("pwned",))


def _fashion_variant(root: Path, name: str, images: np.ndarray, labels: np.ndarray,
                     mangle=None) -> None:
    folder = root / name
    folder.mkdir()
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels),
                        ("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        data = gzip.compress(idx_bytes(array))
        if mangle and stem.endswith(mangle[0]):
            data = mangle[1](data)
        (folder / f"{stem}.gz").write_bytes(data)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection fails at once, as on a machine without network: a download is refused
    in one line instead of waiting."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled for tests")
    for name in ("connect", "connect_ex"):
        original = getattr(socket.socket, name)

        def internet_only(self, *args, _original=original, **kwargs):
            if self.family == socket.AF_UNIX:   # data-loader workers talk over local sockets
                return _original(self, *args, **kwargs)
            return refuse()
        monkeypatch.setattr(socket.socket, name, internet_only)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(autouse=True)
def hub_cache(world, monkeypatch):
    """torch's hub cache is the world's own (with a planted pickle), never the user's."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(world / "hub"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Every input the rows name, good and bad, written once."""
    w = tmp_path_factory.mktemp("world")
    write_fashion_mnist(w / "fm", n_test=40, n_train=64)
    (w / "afile").write_text("a regular file\n")
    (w / "three.txt").write_text("a\nb\nc\n")
    torch.save({"arch": "resnet50", "model_state_dict": {"fc.weight": torch.zeros(3, 4)}},
               w / "notcifar.pth")
    (w / "empty").mkdir()
    os.mkfifo(w / "fifo")
    (w / "dangling").symlink_to(w / "nowhere")
    (w / "loop").symlink_to(w / "loop")
    (w / "det.resume.pth").mkdir()   # the detector's training state path, taken by a folder
    (w / "raises.py").write_text('def build():\n    raise RuntimeError("boom")\n')
    (w / "notmodule.py").write_text("def build():\n    return 3\n")
    (w / "mlp.py").write_text("import torch\n\ndef build():\n    return torch.nn.Sequential("
                              "torch.nn.Flatten(), torch.nn.Linear(768, 10))\n")
    torch.save(torch.nn.Linear(3, 2).state_dict(), w / "sd_tiny.pth")
    small = ("import torch\n\ndef net():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), "
             "torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), "
             "torch.nn.Linear(4, 3))\n")
    (w / "nanmodel.py").write_text(
        small + "\ndef build():\n    m = net()\n    with torch.no_grad():\n"
        "        m[0].weight[0, 0, 0, 0] = float('nan')\n    return m\n"
        "\ndef build_inf():\n    m = net()\n    m.register_buffer('scale', torch.tensor(float('inf')))\n"
        "    return m\n")
    (w / "exits.py").write_text("import sys\n\ndef build():\n    sys.exit(0)\n\n"
                                "def build3():\n    sys.exit(3)\n")
    (w / "exits_import.py").write_text("import sys\nsys.exit(0)\n\ndef build():\n    pass\n")
    (w / "scripted.py").write_text(small + "\ndef build():\n    return torch.jit.script(net())\n")
    (w / "metamodel.py").write_text(small + "\ndef build():\n    with torch.device('meta'):\n"
                                    "        return net()\n")
    # a transformer whose 33 tokens (a class token and 4 x 8 patches of a 32 px input) are no
    # square grid, so --token_grid must give it
    (w / "oddgrid.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_tokens import OddGrid\n\ndef build():\n    return OddGrid()\n")
    # torch's hub cache, holding a pickle that runs code under a torchvision weights file name
    # (the user's cached files stay visible through links: other rows use the COCO weights)
    (w / "hub" / "checkpoints").mkdir(parents=True)
    real = Path(torch.hub.get_dir()) / "checkpoints"
    for cached in sorted(real.glob("*")) if real.is_dir() else []:
        (w / "hub" / "checkpoints" / cached.name).symlink_to(cached)
    (w / "hub" / "checkpoints" / "resnet18-f37072fd.pth").unlink(missing_ok=True)
    (w / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(
        pickle.dumps({"fc.weight": _Pwned()}))
    for root, splits in (("splits", ("train", "test")), ("splits_notrain", ("val", "test"))):
        for split in splits:
            for name in ("a", "b"):
                (w / root / split / name).mkdir(parents=True)
                for k in range(2):
                    Image.new("RGB", (40, 30), (60 * k, 90, 200)).save(
                        w / root / split / name / f"{k}.png")
    (w / "splits" / "val").mkdir()   # train/, val/ and test/: val/ validates
    for name in ("a", "b"):
        shutil.copytree(w / "splits" / "test" / name, w / "splits" / "val" / name)
    for name in ("a", "b"):
        (w / "fbroken" / name).mkdir(parents=True)
        for k in range(4):
            Image.new("RGB", (40, 30), (40 * k, 90, 200)).save(w / "fbroken" / name / f"{k}.png")
    for name in ("unicorn", "goldfish"):
        (w / "fold" / name).mkdir(parents=True)
        Image.new("RGB", (50, 40), (90, 30, 200)).save(w / "fold" / name / "a.png")
    for name in ("a", "b"):
        (w / "ftree" / name).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (40, 30), (40 * k, 90, 200)).save(w / "ftree" / name / f"{k}.png")
    good = random_checkpoint(w / "ck.pth")
    payload = torch.load(good, weights_only=True)

    def variant(name: str, **changes) -> None:
        torch.save({**payload, **changes}, w / name)

    (w / "ck_text.pth").write_text("epoch 3, accuracy 91%\nthis is a text file\n")
    (w / "ck_truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (w / "ck_garbage.pth").write_bytes(np.random.default_rng(0).bytes(5000))
    (w / "ck_pickle.pth").write_bytes(pickle.dumps({"model_state_dict": _Pwned()}))
    torch.save([1, 2, 3], w / "ck_list.pth")
    variant("ck_arch.pth", arch="vgg16")
    variant("ck_classes5.pth", classes=["a", "b", "c", "d", "e"])
    variant("ck_classes_int.pth", classes=7)
    variant("ck_msd_int.pth", model_state_dict=5)
    variant("ck_std0.pth", std=[0.0, 0.0, 0.0])
    variant("ck_mean_text.pth", mean="grey")
    variant("ck_input_size.pth", input_size=-3)
    for name, value in (("ck_nan.pth", float("nan")), ("ck_inf.pth", float("inf"))):
        state = dict(payload["model_state_dict"])
        state["layer4.1.conv2.weight"] = state["layer4.1.conv2.weight"].clone()
        state["layer4.1.conv2.weight"][0, 0, 0, 0] = value
        variant(name, model_state_dict=state)

    state = dict(payload["model_state_dict"])
    state["conv1.weight"] = (state["conv1.weight"].float() * 100).round().long()
    variant("ck_int_weights.pth", model_state_dict=state)
    variant("ck_std_tiny.pth", std=[1e-300] * 3)
    variant("ck_acc_tensor.pth", acc=torch.tensor(91.5))
    variant("ck_size_tensor.pth", input_size=torch.tensor(32))
    variant("ck_epoch_float.pth", epoch=2.5)
    variant("ck_mean_nan.pth", mean=[0.2, float("nan"), 0.2])
    state = dict(payload["model_state_dict"])
    state["layer4.1.conv2.weight"] = torch.empty_like(state["layer4.1.conv2.weight"],
                                                      device="meta")
    variant("ck_meta.pth", model_state_dict=state)
    for name in ("a", "b"):   # one unreadable image in each class: met in the first epoch
        (w / "fbroken" / name / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))

    torch.save({"arch": "fasterrcnn_resnet18_fpn", "model_state_dict": {"x": torch.zeros(1)}},
               w / "det_nometa.pth")
    # Detector descriptions: check_metadata refuses them before any weight is looked at, so a
    # placeholder state dict stands in for the 17 M weights.
    det_meta = {**train_detector.detector_meta(), "model_state_dict": {"x": torch.zeros(1)}}
    for name, changes in (("det_fpn_negative", {"fpn_channels": -64}),
                          ("det_thresh_text", {"score_thresh": "0.5"}),
                          ("det_anchors_empty", {"anchor_sizes": []}),
                          ("det_anchors_3", {"anchor_sizes": [[16], [32], [64]]}),
                          ("det_std_tensor", {"std": torch.tensor([0.2, 0.2, 0.2])}),
                          ("det_classes_int", {"classes": 11})):
        torch.save({**det_meta, **changes}, w / f"{name}.pth")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(w / "good.png")
    (w / "text.png").write_text("not an image\n")
    (w / "truncated.png").write_bytes((w / "good.png").read_bytes()[:60])
    (w / "bomb.png").write_bytes(_png_with_size(60000, 60000))
    Image.fromarray(np.linspace(0, 1000, 400, dtype=np.float32).reshape(20, 20)
                    ).save(w / "float_wide.tif")
    nan = np.full((20, 20), 0.5, dtype=np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan).save(w / "float_nan.tif")
    Image.new("RGB", (20, 20), (10, 200, 10)).convert("LAB").save(w / "lab.tif")

    # VOC-style sets made of two shipped scenes, with a bad image list each; the shipped
    # scene detector (linked, not copied) reads them.
    (w / "det.pth").symlink_to(ROOT / "checkpoints" / "fasterrcnn_fashion_scenes.pth")
    (w / "outside").mkdir()
    for name, listed in (("voc_escape", b"000000\n../../outside/stolen\n"),
                         ("voc_latin1", "000000\nsc\u00e8ne\n".encode("latin-1")),
                         ("voc_missing", b"000000\n000001\n000123\n")):
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (w / name / sub).mkdir(parents=True)
        for image_id in ("000000", "000001"):
            for sub, suffix in (("JPEGImages", "png"), ("Annotations", "xml")):
                shutil.copy(SCENES / sub / f"{image_id}.{suffix}", w / name / sub)
        (w / name / "ImageSets" / "Main" / "test.txt").write_bytes(listed)
    shutil.copy(SCENES / "Annotations" / "000000.xml", w / "outside" / "stolen.xml")
    shutil.copy(SCENES / "JPEGImages" / "000000.png", w / "outside" / "stolen.png")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = (np.arange(40) % 10).astype(np.uint8)
    label10 = labels.copy()
    label10[7] = 10
    _fashion_variant(w, "fm_stream", images, labels,
                     ("images-idx3-ubyte", lambda b: b[:20] + bytes(255 - x for x in b[20:])))
    _fashion_variant(w, "fm_crc", images, labels,
                     ("images-idx3-ubyte", lambda b: b[:-8] + bytes(4) + b[-4:]))
    _fashion_variant(w, "fm_truncated", images, labels,
                     ("images-idx3-ubyte", lambda b: gzip.compress(gzip.decompress(b)[:-100])))
    _fashion_variant(w, "fm_header", images, labels,
                     ("images-idx3-ubyte", lambda b: gzip.compress(b"\x01\x02" +
                                                                   gzip.decompress(b)[2:])))
    _fashion_variant(w, "fm_label10", images, label10)
    _fashion_variant(w, "fm_6bytes", images, labels,
                     ("images-idx3-ubyte", lambda b: gzip.compress(b"\0\0\x08\x03\0\0")))
    # dims whose product is 2**64: an int64 product wraps to 0, the size of the data
    _fashion_variant(w, "fm_overflow", images, labels,
                     ("images-idx3-ubyte", lambda b: gzip.compress(
                         b"\0\0\x08\x03" + struct.pack(">3I", 2**31, 2**31, 4))))
    _fashion_variant(w, "fm_20px", rng.integers(0, 256, size=(40, 20, 20), dtype=np.uint8),
                     labels)
    _fashion_variant(w, "fm_count", images, labels[:39])
    return w


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (recursively) with a hash of its bytes."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _stat_snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``folder`` with its size, inode and modification time: any write or
    replacement changes one of them, without hashing the shared inputs (700 MB of
    checkpoints) twice per row."""
    return {str(p): (st.st_size, st.st_ino, st.st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and (st := p.stat())}


def _visible_lines(stderr: str) -> list[str]:
    """What a terminal shows: for each line the text after its last carriage return (a closed
    progress bar erases itself with ``\\r``), blank lines dropped."""
    last = [line.split("\r")[-1] for line in stderr.split("\n")]
    return [line for line in last if line.strip()]


def _assert_refused(world: Path, folder: Path, capfd, argv: str | list[str], code: int,
                    fragment: str) -> None:
    """Run one row in ``folder`` and check everything the module docstring promises."""
    shutil.copy(world / "ck.pth", folder / "ck.pth")
    own = argv if isinstance(argv, list) else argv.format(w=world, o=folder).split()
    defaults = ["--data_dir", f"{world}/fm", "--out_dir", f"{folder}/out",
                "--log_dir", f"{folder}/logs", "--save_path", f"{folder}/ck.pth"]
    before = _stat_snapshot(world), _snapshot(folder)
    result = main.main(defaults + own)   # an exception escaping here fails the row
    out, err = capfd.readouterr()
    lines = _visible_lines(err)
    assert result == code, (result, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], (fragment, lines[0])
    assert "pwned" not in out
    assert (_stat_snapshot(world), _snapshot(folder)) == before
    assert not (folder / "out").exists() and not (folder / "logs").exists()


@pytest.mark.parametrize("argv, code, fragment", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(world, tmp_path, capfd, argv, code, fragment):
    _assert_refused(world, tmp_path, capfd, argv, code, fragment)


def test_a_non_finite_loss_stops_training_and_keeps_the_checkpoint(world, tmp_path, capfd,
                                                                   monkeypatch):
    """The loss turns NaN at the second step (as ``--lr`` far too high makes it, only slower):
    exit 3, one line, and the checkpoint that was there is byte-identical."""
    real = torch.nn.CrossEntropyLoss

    class NaNFromSecondStep(real):
        calls = 0

        def forward(self, logits, labels):
            NaNFromSecondStep.calls += 1
            loss = super().forward(logits, labels)
            return loss * float("nan") if NaNFromSecondStep.calls >= 2 else loss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NaNFromSecondStep)
    _assert_refused(world, tmp_path, capfd, "--mode train --dataset fashion_mnist --num_epochs 1 "
                    "--batch_size 32 --precision fp32", STOPPED, "not finite")
    assert NaNFromSecondStep.calls == 2


def test_the_table_has_at_least_fifty_rows_with_unique_ids():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 50 and len(set(ids)) == len(ids)


def test_every_numeric_flag_has_a_range():
    numeric = {a.dest for a in main.build_parser()._actions if a.type in (int, float)}
    assert numeric == set(NUMBERS), numeric ^ set(NUMBERS)


def test_help_still_prints_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--help"])
    assert exit_info.value.code == 0 and "--hidden_strategy" in capsys.readouterr().out


def test_a_flag_error_is_not_argparse_usage_block(capfd):
    assert main.main(["--mode", "bogus"]) == BAD
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err and err.startswith("error: argument --mode")
    assert isinstance(main.build_parser(), argparse.ArgumentParser)


def test_every_flag_is_read_by_some_job_or_shared():
    """A new flag needs its place in a job of jobs.JOBS (or SHARED), or it is refused
    everywhere."""
    flags = {a.dest for a in main.build_parser()._actions if a.dest != "help"}
    read = set(jobs.SHARED).union(*(job.reads for job in jobs.JOBS))
    assert flags == read, flags ^ read


@pytest.mark.parametrize("argv, job", [
    ([], "test"), (["--mode", "train"], "train"), (["--mode", "train", "--det_vis"],
                                                   "train_detector"),
    (["--make_scenes", "x"], "make_scenes"), (["--det_img", "x.png"], "detect_image"),
    (["--det_vis"], "detect_set"), (["--sanity"], "sanity"), (["--sanity", "--image", "x"],
                                                             "sanity"),
    (["--image", "x"], "heatmaps"), (["--vis", "cam", "--hidden_strategy", "zero"],
                                     "leaderboard"),
    (["--vis", "cam"], "heatmaps"), (["--mode", "train", "--arch", "resnet18"], "finetune"),
    (["--list_layers", "--arch", "resnet18"], "list_layers"),
])
def test_defaults_never_count_as_unused_flags(argv, job):
    """Only a flag given with another value than its default is checked: every job with its
    own flags alone passes."""
    parser = main.build_parser()
    args = parser.parse_args(argv)
    assert jobs.job_of(args).name == job
    jobs.check_unused(args, main.parser_defaults(parser))


def test_an_unused_flag_names_the_job_that_ignores_it():
    parser = main.build_parser()
    args = parser.parse_args(["--mode", "train", "--image", "x.png", "--vis", "cam"])
    with pytest.raises(validation.FlagError, match=r"arguments --vis, --image: not used by "
                                                   r"the job 'train'"):
        jobs.check_unused(args, main.parser_defaults(parser))


def test_dispatch_and_the_refusal_of_flags_come_from_one_declaration(monkeypatch):
    """The job that runs is the job whose flags were checked: a job's function is called
    through its declaration, and a flag it does not declare is refused before it runs."""
    ran = []
    fake = types.ModuleType("fake_job")
    fake.run = lambda args: ran.append(args) or 0
    monkeypatch.setitem(sys.modules, "fake_job", fake)
    declared = jobs.Job("fake", "a job for this test", lambda a: True, frozenset({"vis"}),
                        "fake_job:run")
    monkeypatch.setattr(jobs, "JOBS", (declared,))
    parser = main.build_parser()
    args = parser.parse_args(["--vis", "cam"])
    jobs.check_unused(args, main.parser_defaults(parser))
    assert jobs.run(args) == 0 and ran == [args]
    args = parser.parse_args(["--vis_num", "3"])
    with pytest.raises(validation.FlagError, match="--vis_num: not used by the job 'fake'"):
        jobs.check_unused(args, main.parser_defaults(parser))


def test_ctrl_c_under_a_progress_bar_starts_its_own_line(world, tmp_path, capfd, monkeypatch):
    """Ctrl-C (or an error) in the middle of a loop with a progress bar: the bar is erased
    and ``error: interrupted`` is a line of its own, not glued to the bar's last frame."""
    from tqdm import tqdm

    def interrupted(args):
        bar = tqdm(total=10, desc="epoch 1/1", file=sys.stderr)
        bar.update(4)
        raise KeyboardInterrupt
    monkeypatch.setattr(jobs, "run", interrupted)
    code = main.main(["--vis", "gradcam", "--out_dir", str(tmp_path / "out"),
                      "--save_path", str(world / "ck.pth"), "--data_dir", str(world / "fm")])
    err = capfd.readouterr().err
    assert code == 130
    assert _visible_lines(err) == ["error: interrupted"], err
