"""folders.py: photos and ImageFolder trees streamed from disk, and maps back on the photo."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data import InputSpec
from errors import UserError
from folders import (
    NO_LABEL,
    PhotoDataset,
    heatmap_on_photo,
    image_folder,
    list_images,
    load_photo,
    photo_batches,
    photo_loader,
    seeded_split,
    train_val_folders,
    training_pixels,
)
from visualize import to_uint8_image
from zoo import IMAGENET_MEAN, IMAGENET_STD


def spec(size, resize, mean, std, **kw):
    """An input description with test classes: ``size`` px, resized to ``resize`` first."""
    return InputSpec(name="test", classes=("a", "b", "c"), mean=tuple(mean), std=tuple(std),
                     input_size=size, resize_size=resize, **kw)

PREP = spec(32, 36, IMAGENET_MEAN, IMAGENET_STD)


def write_image(path, size=(40, 30), colour=(200, 10, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


@pytest.fixture
def tree(tmp_path):
    """A photo tree: nested folders, PNG and JPEG, a text file and a hidden file to ignore."""
    root = tmp_path / "photos"
    write_image(root / "b.png")
    write_image(root / "a" / "z.JPG", (30, 50), (10, 200, 10))
    write_image(root / "a" / "deeper" / "y.jpeg", (64, 64))
    (root / "notes.txt").write_text("not an image")
    write_image(root / "._hidden.jpg")
    return root


def test_list_images_is_sorted_recursive_and_skips_other_files(tree):
    assert [p.relative_to(tree).as_posix() for p in list_images(tree)] == [
        "a/deeper/y.jpeg", "a/z.JPG", "b.png"]


def test_a_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="holds no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(UserError, match="no such folder"):
        list_images(tmp_path / "missing")


def test_dataset_streams_pixels_through_the_preprocessing(tree):
    dataset = PhotoDataset(list_images(tree), PREP)
    item = dataset[1]                                       # a/z.JPG, 30 x 50, green
    assert item.pixels.shape == (3, 32, 32) and item.label == NO_LABEL and item.index == 1
    assert item.size == (30, 50) and item.error == ""
    assert item.pixels[1].mean() > 0.7 and item.pixels[0].mean() < 0.1


def test_loader_with_workers_gives_the_same_batches_in_order(tree):
    dataset = PhotoDataset(list_images(tree), PREP)
    serial = list(photo_batches(photo_loader(dataset, batch_size=2, workers=0)))
    parallel = list(photo_batches(photo_loader(dataset, batch_size=2, workers=2)))
    assert [b.indices.tolist() for b in parallel] == [[0, 1], [2]]
    for a, b in zip(serial, parallel):
        assert torch.equal(a.pixels, b.pixels) and a.sizes == b.sizes


def test_a_corrupt_image_is_one_line_in_the_main_process(tree):
    (tree / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    dataset = PhotoDataset(list_images(tree), PREP)
    with pytest.raises(UserError, match="broken.png") as exc:
        list(photo_batches(photo_loader(dataset, batch_size=2, workers=1)))
    assert "\n" not in str(exc.value) and "Traceback" not in str(exc.value)


def test_image_folder_matches_class_folders_by_name(tmp_path):
    root = tmp_path / "val"
    write_image(root / "tiger_cat" / "1.jpg")
    write_image(root / "Goldfish" / "2.png")
    write_image(root / "Goldfish" / "sub" / "3.png")
    (root / "tench").mkdir()                                   # an empty class is skipped
    paths, labels = image_folder(root, ("tench", "goldfish", "tiger cat"))
    assert [p.name for p in paths] == ["2.png", "3.png", "1.jpg"] and labels == [1, 1, 2]
    dataset = PhotoDataset(paths, PREP, labels)
    assert dataset[2].label == 2


def test_image_folder_refuses_a_folder_that_is_no_class(tmp_path):
    root = tmp_path / "val"
    write_image(root / "goldfsh" / "1.jpg")
    with pytest.raises(UserError, match="'goldfsh' is not among .* \\(close: goldfish\\)") as e:
        image_folder(root, ("tench", "goldfish"))
    assert "\n" not in str(e.value)
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "x.png")
    with pytest.raises(UserError, match="no class subfolders"):
        image_folder(tmp_path / "flat", ("a",))
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="hold no images"):
        image_folder(tmp_path / "hollow", ("a",))


def test_heatmap_lands_on_the_centre_crop_of_the_photo():
    """A 300 x 200 photo at resize 256 / crop 224: the model saw the centre 175 x 175 square.
    A map that is 1 on the model's left half covers the left half of that square only."""
    prep = spec(224, 256, IMAGENET_MEAN, IMAGENET_STD)
    heatmap = torch.zeros(224, 224)
    heatmap[:, :112] = 1.0
    photo_map, box = heatmap_on_photo(heatmap, (300, 200), prep)
    assert photo_map.shape == (200, 300)
    assert box == (62, 12, 238, 188)
    assert photo_map[:, :62].max() == 0 and photo_map[:, 238:].max() == 0
    assert photo_map[:12].max() == 0 and photo_map[188:].max() == 0
    assert photo_map[100, 70] == 1.0 and photo_map[100, 230] == 0.0
    small, small_box = heatmap_on_photo(heatmap, (150, 100), prep, original_size=(300, 200))
    assert small.shape == (100, 150) and small_box == (31, 6, 119, 94)


def test_a_squashed_model_sees_the_whole_photo():
    prep = spec(32, None, IMAGENET_MEAN, IMAGENET_STD)
    photo_map, box = heatmap_on_photo(torch.ones(32, 32), (60, 20), prep)
    assert box == (0, 0, 60, 20)
    torch.testing.assert_close(photo_map, torch.ones(20, 60))


def test_load_photo_keeps_the_aspect_ratio(tmp_path):
    path = write_image(tmp_path / "wide.png", (400, 100))
    pixels = load_photo(path, max_side=200)
    assert pixels.shape == (3, 50, 200) and pixels.max() <= 1
    assert np.isclose(float(pixels[0].mean()), 200 / 255, atol=1e-3)


def test_the_panel_photo_from_the_dataset_is_load_photo_from_one_decode(tmp_path):
    """Asked for panels, the dataset gives each photo for its panel from the decode that made
    the model's pixels: exactly :func:`load_photo` (EXIF orientation, alpha on black, the
    longer side scaled down; as RGB uint8, the values that a panel draws), through worker
    processes too."""
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                        # "rotate 90 degrees clockwise to view"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 700, 3), dtype=np.uint8)).save(rotated,
                                                                               exif=exif)
    clear = tmp_path / "clear.png"
    Image.fromarray(rng.integers(0, 255, (40, 60, 4), dtype=np.uint8), "RGBA").save(clear)
    paths = [rotated, clear]
    dataset = PhotoDataset(paths, PREP, panel_side=256)
    for i, path in enumerate(paths):
        assert dataset[i].panel.dtype == np.uint8
        assert np.array_equal(dataset[i].panel, to_uint8_image(load_photo(path, max_side=256)))
        assert torch.equal(torch.tensor(dataset[i].panel).permute(2, 0, 1).float() / 255,
                           load_photo(path, max_side=256)), path.name
        assert torch.equal(dataset[i].pixels, PhotoDataset(paths, PREP)[i].pixels)
    assert PhotoDataset(paths, PREP)[0].panel is None
    batches = list(photo_batches(photo_loader(dataset, 2, workers=1)))
    assert np.array_equal(batches[0].panels[0], dataset[0].panel)
    assert batches[0].panels[0].shape == (256, 110, 3)      # upright: taller than wide


def test_training_pixels_augment_at_the_model_size(tmp_path):
    path = write_image(tmp_path / "x.png", (80, 50))
    dataset = PhotoDataset([path], PREP, [0], transform=training_pixels(PREP))
    torch.manual_seed(0)
    first = dataset[0].pixels
    assert first.shape == (3, 32, 32) and 0 <= first.min() and first.max() <= 1
    gradient = Image.fromarray(np.tile(np.arange(80, dtype=np.uint8) * 3, (50, 1)))
    gradient.convert("RGB").save(path)
    crops = {tuple(dataset[0].pixels[0, 16].tolist()[:4]) for _ in range(6)}
    assert len(crops) > 1                                       # random crops and flips


def test_train_val_folders_and_a_seeded_stratified_split(tmp_path):
    assert train_val_folders(tmp_path) is None
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    assert train_val_folders(tmp_path) == (tmp_path / "train", tmp_path / "val")
    labels = [0] * 10 + [1] * 5 + [2]
    train, val = seeded_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(16)) and not set(train) & set(val)
    assert [labels[i] for i in val].count(0) == 2 and [labels[i] for i in val].count(1) == 1
    assert 15 in train                                          # a lone image trains
    assert seeded_split(labels, 0.2, seed=3) == (train, val)
    assert seeded_split(labels, 0.2, seed=4) != (train, val)
    with pytest.raises(UserError, match="val_fraction"):
        seeded_split(labels, 1.5, seed=0)


def test_a_padded_input_drops_the_padding_before_the_photo():
    """Fashion-MNIST's way: the photo fills the inner 28 x 28 of the 32 x 32 input, so the
    map's 2-pixel border lies outside the photo."""
    prep = spec(32, None, (0.2,) * 3, (0.3,) * 3, grayscale=True, pad=2)
    heatmap = torch.zeros(32, 32)
    heatmap[2:30, 2:16] = 1.0                     # the photo's left half
    photo_map, box = heatmap_on_photo(heatmap, (56, 56), prep)
    assert box == (0, 0, 56, 56)
    assert photo_map[:, :27].min() > 0.9 and photo_map[:, 29:].max() < 0.1


def test_workers_only_where_cores_are_left_for_them(monkeypatch):
    """A GPU run decodes in workers; a CPU run only on the cores PyTorch's threads leave."""
    from folders import loader_workers
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert loader_workers("cpu") == 0 and loader_workers("cuda") == 2
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert loader_workers("cpu") == 1
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers("cpu") == 2 and loader_workers("cpu", wanted=4) == 4
