"""voc.py's reading: the image list and the annotations are checked when read, not trusted."""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import voc
from errors import UserError

CLASSES = ("Bag", "Trouser", "Coat")


def _xml(objects: list[tuple[str, tuple[str, str, str, str]]], w: int = 40, h: int = 30) -> bytes:
    parts = [f"<annotation><size><width>{w}</width><height>{h}</height></size>"]
    for name, (x1, y1, x2, y2) in objects:
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}"
                     f"</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
                     f"</object>")
    return ("".join(parts) + "</annotation>").encode()


def _png(w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_set(folder: Path, annotations: dict[str, bytes], test_list: bytes | None = None) -> Path:
    """A VOC-layout folder: a 40x30 PNG and the given XML per id, and test.txt."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image_id, xml in annotations.items():
        (folder / "JPEGImages" / f"{image_id}.png").write_bytes(_png())
        (folder / "Annotations" / f"{image_id}.xml").write_bytes(xml)
    listed = test_list if test_list is not None else "".join(
        f"{i}\n" for i in annotations).encode()
    (folder / "ImageSets" / "Main" / "test.txt").write_bytes(listed)
    return folder


GOOD = ("Bag", ("1", "1", "20", "20"))


@pytest.mark.parametrize("box, reason", [
    (("nan", "1", "20", "20"), "non_finite_box"),
    (("1", "1", "inf", "20"), "non_finite_box"),
    (("-20", "1", "10", "20"), "box_outside_image"),
    (("5", "5", "60", "20"), "box_outside_image"),       # the image is 40 wide
    (("5", "5", "5", "20"), "box_without_area"),
    (("30", "5", "10", "20"), "box_without_area"),      # xmax < xmin
    (("5", "25", "10", "20"), "box_without_area"),      # ymax < ymin
])
def test_a_box_that_is_no_box_is_left_out_counted_and_noted(tmp_path, capfd, box, reason):
    folder = write_set(tmp_path, {"000001": _xml([GOOD, ("Coat", box)])})
    with voc.VOCReader(folder, CLASSES) as reader:
        reader.image("000001")
        truth = reader.annotation("000001")
        assert truth.boxes.tolist() == [[0, 0, 20, 20]] and truth.labels.tolist() == [0]
        problems = reader.problems()
    assert problems["objects_left_out"] == 1
    assert problems["objects_left_out_by_reason"][reason] == 1
    notes = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(notes) == 2 and all(line.startswith("note: ") for line in notes), notes
    assert "000001: object 2 (Coat" in notes[0] and voc.LEFT_OUT[reason] in notes[0]
    assert "1 annotated object left out" in notes[1]


def test_a_box_on_the_edge_stays(tmp_path):
    folder = write_set(tmp_path, {"000001": _xml([("Bag", ("1", "1", "40", "30")),
                                                  ("Coat", ("0", "0", "41", "31"))])})
    with voc.VOCReader(folder, CLASSES) as reader:
        assert len(reader.annotation("000001").boxes) == 2 and not reader.problems()[
            "objects_left_out"]


def test_unknown_class_names_are_counted_by_name_never_silently_dropped(tmp_path, capfd):
    folder = write_set(tmp_path, {"000001": _xml([GOOD, ("Handbag", GOOD[1]), ("bag", GOOD[1])]),
                                  "000002": _xml([("Handbag", GOOD[1])])})
    with voc.VOCReader(folder, CLASSES) as reader:
        for image_id in reader.ids():
            reader.annotation(image_id)
        problems = reader.problems()
    assert problems["unknown_classes"] == {"Handbag": 2, "bag": 1}
    assert problems["objects_left_out_by_reason"]["unknown_class"] == 3
    err = capfd.readouterr().err
    assert "Handbag x2, bag x1" in err.splitlines()[-1]


def test_notes_stop_after_a_few_but_every_object_is_counted(tmp_path, capfd):
    bad = [("Bag", ("9", "9", "1", "1"))] * 12
    folder = write_set(tmp_path, {"000001": _xml(bad)})
    with voc.VOCReader(folder, CLASSES) as reader:
        assert len(reader.annotation("000001").boxes) == 0
        assert reader.problems()["objects_left_out"] == 12
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == voc.NOTES_SHOWN + 2 and "12 annotated objects" in lines[-1]


def test_an_id_listed_twice_is_scored_once_with_a_note(tmp_path, capfd):
    folder = write_set(tmp_path, {"000001": _xml([GOOD]), "000002": _xml([GOOD])},
                       b"000001\n000002\n000001\n000001\n")
    with voc.VOCReader(folder, CLASSES) as reader:
        assert reader.ids() == ["000001", "000002"]
        assert reader.ids() == ["000001", "000002"]   # read once, noted once
        assert reader.problems()["duplicate_ids_scored_once"] == 2
    err = capfd.readouterr().err
    assert err.count("note:") == 1 and "2 ids more than once" in err


@pytest.mark.parametrize("listed, fragment", [
    (b"000001\n../../outside/stolen\n", "line 2: '../../outside/stolen' is not an image id"),
    (b"/etc/passwd\n", "is not an image id"),
    (b"sub\\\\000001\n", "is not an image id"),
    (b"..\n", "is not an image id"),
    (b"000001\n\xe9t\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 7)"),
    (b"000001\n000009\n", "1 id without an annotation or an image in the set, e.g. 000009"),
])
def test_a_bad_image_list_is_refused_before_any_image_is_read(tmp_path, listed, fragment):
    folder = write_set(tmp_path / "set", {"000001": _xml([GOOD])}, listed)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "stolen.xml").write_bytes(_xml([GOOD]))
    with voc.VOCReader(folder, CLASSES) as reader, pytest.raises(UserError, match=re.escape(fragment)) as info:
        reader.ids()
    assert "\n" not in str(info.value)


def test_a_byte_order_mark_is_no_part_of_the_first_id(tmp_path):
    folder = write_set(tmp_path, {"000001": _xml([GOOD])}, b"\xef\xbb\xbf000001\r\n")
    with voc.VOCReader(folder, CLASSES) as reader:
        assert reader.ids() == ["000001"]


def test_the_tar_reader_checks_the_list_the_same_way(tmp_path):
    path = tmp_path / "voc.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("Annotations/000001.xml", _xml([GOOD])),
                           ("JPEGImages/000001.png", _png()),
                           ("ImageSets/Main/test.txt", b"000001\n../000001\n")):
            info = tarfile.TarInfo(f"VOCdevkit/VOC2007/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with voc.VOCReader(path, CLASSES) as reader, pytest.raises(UserError, match="line 2"):
        reader.ids()
