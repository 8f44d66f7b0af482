"""The Fashion-MNIST scene generator: tight boxes, disjoint splits, determinism, VOC layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import scenes
from tinydata import idx_bytes
from voc import VOCReader


def write_split(folder: Path, prefix: str, value: int, n: int = 20) -> None:
    """``n`` garments that are a solid block of ``value`` (labels 0..9 in turn)."""
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 4:24, 6:22] = value
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n) % 10))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fm")
    write_split(folder, "train", 250)
    write_split(folder, "t10k", 100)
    return folder


def test_boxes_are_tight_around_the_visible_pixels() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    images[:, :3] = 0                      # some black rows the box must leave out
    labels = np.arange(30) % 10
    for i, scene in enumerate(scenes.scene_stream(images, labels, (7,), 40)):
        assert scene.image.shape == (scenes.CANVAS, scenes.CANVAS)
        assert 1 <= len(scene.boxes) <= scenes.MAX_GARMENTS
        covered = np.zeros_like(scene.image, bool)
        for x1, y1, x2, y2 in scene.boxes.astype(int):
            inside = scene.image[y1:y2, x1:x2] > 0
            covered[y1:y2, x1:x2] = True
            # every edge row and column of the box holds a visible pixel
            assert inside[0].any() and inside[-1].any(), i
            assert inside[:, 0].any() and inside[:, -1].any(), i
        assert not (scene.image[~covered] > 0).any()   # nothing visible outside every box
        if len(scene.boxes) == 1:
            rows, cols = np.nonzero(scene.image)
            assert scene.boxes[0].tolist() == [cols.min(), rows.min(), cols.max() + 1,
                                               rows.max() + 1]


def test_same_key_same_scenes_other_key_other_scenes() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    labels = np.arange(50) % 10
    a = list(scenes.scene_stream(images, labels, (3, 1), 12))
    b = list(scenes.scene_stream(images, labels, (3, 1), 12))
    c = list(scenes.scene_stream(images, labels, (3, 2), 12))
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
        assert np.array_equal(x.labels, y.labels)
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(a, c))
    # a scene is the same whether made alone or in a stream
    alone = scenes.make_scene(np.random.default_rng((3, 1, 5)), images, labels)
    assert np.array_equal(alone.image, a[5].image)


def test_some_scenes_hold_two_garments_of_one_class() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(100, 28, 28), dtype=np.uint8)
    labels = np.arange(100) % 10
    stream = list(scenes.scene_stream(images, labels, (0,), 200))
    repeated = sum(len(set(s.labels.tolist())) < len(s.labels) for s in stream)
    assert repeated >= 0.2 * len(stream)


def test_train_and_test_scenes_use_their_own_split(data_dir: Path) -> None:
    train_images, train_labels = scenes.garment_pool(data_dir, train=True)
    test_images, test_labels = scenes.garment_pool(data_dir, train=False)
    train = list(scenes.scene_stream(train_images, train_labels, (0, 1), 10))
    test = list(scenes.scene_stream(test_images, test_labels, (0, 1), 10))
    # resampling a solid block keeps its value inside and only lowers it at the fringe
    assert all(s.image.max() == 250 for s in train)
    assert all(s.image.max() == 100 for s in test)


def test_scenes_written_in_the_voc_layout_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % 10
    made = list(scenes.scene_stream(images, labels, (9,), 5))
    scenes.write_voc(tmp_path / "scenes", made)
    assert (tmp_path / "scenes" / "ImageSets" / "Main" / "test.txt").is_file()
    with VOCReader(tmp_path / "scenes", scenes.CLASSES) as reader:
        assert reader.ids() == [f"{i:06d}" for i in range(5)]
        for image_id, scene in zip(reader.ids(), made):
            image = reader.image(image_id)
            assert np.array_equal(image[..., 0], scene.image) and image.shape[2] == 3
            truth = reader.annotation(image_id)
            assert truth.boxes.tolist() == scene.boxes.tolist()
            assert truth.labels.tolist() == scene.labels.tolist()
            assert not truth.difficult.any()


def test_writing_scenes_on_a_full_disk_leaves_no_half_file(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The third file fails half-written (as on a full disk): one line naming it, no half
    file and no temporary left, no image list naming scenes that are not there."""
    import outputs
    from errors import UserError
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    made = list(scenes.scene_stream(images, np.arange(20) % 10, (0,), 3))
    real = Path.write_bytes
    calls = []

    def full_disk(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == 3:
            real(self, bytes(data)[:10])
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    outputs.written.clear()
    with pytest.raises(UserError, match=r"cannot write .*000001\.png: No space left on device"):
        scenes.write_voc(tmp_path / "scenes", made)
    left = sorted(str(p.relative_to(tmp_path / "scenes")) for p in (tmp_path / "scenes").rglob("*")
                  if p.is_file())
    assert left == ["Annotations/000000.xml", "JPEGImages/000000.png"]
    assert [p.name for p in outputs.written] == ["000000.png", "000000.xml"]
    outputs.written.clear()
