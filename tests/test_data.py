"""data.py: loaders on small files in the real formats, augmentation, normalization, images."""
from __future__ import annotations

import gzip
import io
import itertools
import socket
import struct
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import data
from data import (
    DATASETS,
    ImageSplit,
    batches,
    denormalize,
    load_split,
    normalize,
    open_image,
    random_crop_flip,
    read_idx,
)
from errors import UserError
from tinydata import idx_bytes, write_cifar10, write_fashion_mnist


@pytest.fixture
def no_download(monkeypatch):
    """Any connection fails at once, as on a machine without network."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled for tests")
    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", data.Path("/nonexistent"))


def test_read_idx_gzipped_and_plain(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    with gzip.open(tmp_path / "a.gz", "wb") as f:
        f.write(idx_bytes(array))
    assert np.array_equal(read_idx(tmp_path / "a"), array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


@pytest.mark.parametrize("payload, fragment", [
    (b"\x00\x00\x0d\x03" + b"\x00" * 12, "bad header"),              # float32 idx, not uint8
    (idx_bytes(np.zeros((2, 3, 4), np.uint8))[:-5], "truncated"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, payload, fragment):
    (tmp_path / "bad").write_bytes(payload)
    with pytest.raises(UserError, match=fragment):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_debian_layout(tmp_path):
    write_fashion_mnist(tmp_path, n_test=12, n_train=20)
    test = load_split("fashion_mnist", tmp_path, train=False)
    train = load_split("fashion_mnist", tmp_path, train=True)
    assert test.images.shape == (12, 3, 32, 32) and test.images.dtype == torch.uint8
    assert len(train) == 20 and test.labels.tolist()[:3] == [0, 1, 2]
    raw = read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(test.images[:, 0, 2:30, 2:30], torch.from_numpy(raw.copy()))
    assert torch.equal(test.images[:, 0], test.images[:, 2])            # gray -> 3 channels
    assert test.images[:, :, :2].sum() == 0 and test.images[:, :, :, 30:].sum() == 0


def test_fashion_mnist_from_torchvision_layout_plain_files(tmp_path):
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_test=5, gz=False)
    assert len(load_split("fashion_mnist", tmp_path, train=False)) == 5


def test_fashion_mnist_missing_without_network(tmp_path, no_download):
    with pytest.raises(UserError, match="Fashion-MNIST is not in .*FashionMNIST/raw"):
        load_split("fashion_mnist", tmp_path, train=False)


def test_cifar10_real_format_through_torchvision(tmp_path, monkeypatch):
    write_cifar10(tmp_path, per_batch=6)
    # The tiny files cannot have the real archive's MD5 sums; only this check is bypassed.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    train = load_split("cifar10", tmp_path, train=True)
    test = load_split("cifar10", tmp_path, train=False)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.info.classes[3] == "cat"
    reference = torchvision.datasets.CIFAR10(tmp_path, train=False)
    image, label = reference[4]
    assert torch.equal(test.images[4].permute(1, 2, 0), torch.from_numpy(np.array(image)))
    assert test.labels[4].item() == label


def test_cifar10_missing_without_network(tmp_path, no_download):
    with pytest.raises(UserError, match="cifar-10-python.tar.gz|cifar-10-batches-py"):
        load_split("cifar10", tmp_path, train=False)


def test_normalize_round_trip():
    info = DATASETS["cifar10"]
    pixels = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(denormalize(normalize(pixels, info), info), pixels)
    assert torch.allclose(normalize(torch.tensor(info.mean).view(1, 3, 1, 1), info),
                          torch.zeros(1, 3, 1, 1), atol=1e-6)


def test_random_crop_flip_gives_crops_of_the_padded_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, hflip=True, generator=gen)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts, flips = set(), set()
    for i in range(len(images)):
        crops = [(dy, dx, padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5)]
        matches = [(dy, dx, f) for dy, dx, crop in crops for f in (False, True)
                   if torch.equal(out[i], crop.flip(2) if f else crop)]
        assert matches, i
        shifts.add(matches[0][:2])
        flips.add(matches[0][2])
    assert len(shifts) > 3 and flips == {False, True}


def test_random_crop_flip_without_padding_or_flip_is_identity():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, 0, False, torch.Generator())
    assert torch.equal(out, images)


def test_batches_cover_every_sample_once_and_are_seeded():
    split = ImageSplit(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2),
                       torch.arange(10), DATASETS["cifar10"])
    run = lambda seed: [y.tolist() for _, y in batches(
        split, 4, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(seed))]
    first = run(1)
    assert sorted(itertools.chain.from_iterable(first)) == list(range(10)) and [len(b) for b in first] == [4, 4, 2]
    assert run(1) == first and run(2) != first
    images, labels = next(batches(split, 10, torch.device("cpu")))
    expected = normalize(labels.float().div(255).view(10, 1, 1, 1).expand(10, 3, 2, 2),
                         split.info)
    torch.testing.assert_close(images, expected)


def load_image(path, info):
    """A photo as the model's pixels: the one decoder, then the input description."""
    return info.pixels(open_image(path))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_load_image_accepts_any_mode(tmp_path, mode):
    Image.new(mode, (50, 40), 200 if mode in ("L", "P") else (200, 100, 50, 255)[:len(mode)]
              ).save(tmp_path / "x.png")
    for name in ("cifar10", "fashion_mnist"):
        pixels = load_image(tmp_path / "x.png", DATASETS[name])
        assert pixels.shape == (3, 32, 32) and 0 <= pixels.min() and pixels.max() <= 1
    gray = load_image(tmp_path / "x.png", DATASETS["fashion_mnist"])
    assert gray[:, :2].sum() == 0 and torch.equal(gray[0], gray[1])


def test_load_image_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="image not found"):
        load_image(tmp_path / "nope.png", DATASETS["cifar10"])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "bad.jpg", DATASETS["cifar10"])


def test_open_image_turns_a_photo_upright_by_its_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view", as phones write it
    Image.new("RGB", (60, 20), (10, 20, 30)).save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (20, 60)
    with pytest.raises(UserError, match=r"cannot read image tar:x\.jpg"):
        open_image(io.BytesIO(b"not an image"), name="tar:x.jpg")


def test_a_16_bit_grey_png_is_read_by_its_bit_depth(tmp_path):
    """Mid-grey in 16 bits (32768 of 65535) is mid-grey, not white (PIL clips at 255)."""
    Image.fromarray(np.full((20, 30), 32768, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert open_image(tmp_path / "g16.png").mode == "L"
    pixels = load_image(tmp_path / "g16.png", DATASETS["cifar10"])
    assert pixels.mean().item() == pytest.approx(128 / 255, abs=1e-6)
    assert np.asarray(open_image(tmp_path / "g16.png").convert("RGB")).mean() == 128


def test_a_float_tiff_in_0_1_is_read_by_its_value_range(tmp_path):
    """A float TIFF in [0, 1] keeps its brightness (PIL's conversion turns it black)."""
    ramp = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    Image.fromarray(ramp).save(tmp_path / "f.tif")
    grey = np.asarray(open_image(tmp_path / "f.tif"))
    np.testing.assert_array_equal(grey, np.rint(ramp * 255).astype(np.uint8))


@pytest.mark.parametrize("values, fragment", [
    (np.full((4, 4), 3.5, dtype=np.float32), r"values in \[3.5, 3.5\]"),
    (np.array([[0.5, np.inf]], dtype=np.float32), "NaN or infinite"),
    (np.full((4, 4), 70000, dtype=np.int32), "unknown bit depth"),
])
def test_images_whose_range_cannot_be_known_are_refused(tmp_path, values, fragment):
    Image.fromarray(values).save(tmp_path / "x.tif")
    with pytest.raises(UserError, match=fragment):
        open_image(tmp_path / "x.tif")


def test_labels_are_checked_when_the_split_is_loaded(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_test=12)
    labels = (np.arange(12) % 10).astype(np.uint8)
    labels[5] = 200
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(labels))
    with pytest.raises(UserError, match="image 5 has label 200, but the classes are 0..9"):
        load_split("fashion_mnist", tmp_path / "fm", train=False)


def test_a_corrupt_gzip_stream_is_one_line(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_test=12)
    path = folder / "t10k-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[:20] + bytes(255 - b for b in raw[20:]))
    with pytest.raises(UserError, match="cannot read .*t10k-images"):
        read_idx(path)


def test_a_very_large_image_is_shrunk_with_one_note_instead_of_pils_warning(tmp_path, capfd,
                                                                            monkeypatch):
    """Past PIL's decompression-bomb warning (89 megapixels; lowered here so that a small
    file stands in for a 100-megapixel one): no warning, one note, a smaller image. Past
    twice the limit it is still refused."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(data, "LARGEST_SIDE", 20)
    for suffix in ("png", "jpg"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / f"big.{suffix}")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image = data.open_image(tmp_path / f"big.{suffix}")
        assert image.size == (20, 15)
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and err.startswith("note: image ") and "shrunk to 20x15" in err
    Image.new("RGB", (50, 50)).save(tmp_path / "bomb.png")
    with pytest.raises(UserError, match="bomb.png"):
        data.open_image(tmp_path / "bomb.png")


def test_an_image_in_a_colour_space_without_rgb_conversion_is_refused(tmp_path):
    Image.new("RGB", (8, 8), (10, 200, 10)).convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(UserError, match=r"LAB \(CIE L\*a\*b\*\)"):
        data.open_image(tmp_path / "lab.tif")


@pytest.mark.parametrize("raw, fragment", [
    (b"\0\0\x08\x03\0\0", "less than its own header"),
    (b"\0\0\x08\x03" + struct.pack(">3I", 2**31, 2**31, 4), "truncated or corrupt"),
    (b"\0\0\x08", "bad header"),
])
def test_short_or_overflowing_idx_headers_are_one_line(tmp_path, raw, fragment):
    (tmp_path / "x-idx3-ubyte").write_bytes(raw)
    with pytest.raises(UserError, match=fragment):
        data.read_idx(tmp_path / "x-idx3-ubyte")


def test_fashion_mnist_of_another_image_size_is_refused(tmp_path):
    images = np.zeros((4, 20, 20), np.uint8)
    labels = np.arange(4, dtype=np.uint8)
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    with pytest.raises(UserError, match="20x20 images; Fashion-MNIST's are 28x28"):
        data.load_fashion_mnist(tmp_path, train=False)
