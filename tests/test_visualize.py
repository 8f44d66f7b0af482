"""Pictures a reader can trust: detection labels never cover one another or leave the image."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import visualize


def _inside(rect, shape) -> bool:
    return 0 <= rect[0] and 0 <= rect[1] and rect[2] <= shape[1] and rect[3] <= shape[0]


@pytest.mark.parametrize("boxes", [
    [(10, 10, 60, 60), (12, 12, 58, 58), (14, 8, 70, 40)],     # three boxes at one corner
    [(0, 0, 30, 30), (0, 0, 200, 200), (170, 170, 200, 200)],  # at the image's edges
    [(150, 5, 199, 40), (120, 0, 199, 20)],                    # labels would leave at the right
])
def test_labels_are_inside_the_image_and_never_overlap(boxes) -> None:
    sizes = [(60, 14)] * len(boxes)
    rects = visualize.place_labels(sizes, boxes, (200, 200))
    assert all(_inside(r, (200, 200)) for r in rects)
    for a, b in itertools.combinations(rects, 2):
        assert visualize._overlap(a, b) == 0, (a, b)


def test_a_label_above_a_free_box_stays_where_a_reader_expects_it() -> None:
    (rect,) = visualize.place_labels([(40, 12)], [(50, 60, 120, 140)], (200, 200))
    assert rect == (50, 48, 90, 60)   # just above the box, left-aligned


def test_drawn_labels_keep_their_text_readable() -> None:
    """Two detections at the same place: both labels are drawn, in their own colours."""
    image = np.zeros((256, 256, 3), np.uint8)
    visualize.draw_boxes(image, [(20, 40, 120, 140), (22, 42, 118, 138)],
                         ["Trouser 0.67", "Bag 0.99"], [(255, 0, 0), (0, 0, 255)])
    red = (image[..., 0] == 255) & (image[..., 1] == 0) & (image[..., 2] == 0)
    blue = (image[..., 2] == 255) & (image[..., 0] == 0) & (image[..., 1] == 0)
    # each label is a filled block of its colour, larger than a box outline alone
    assert red.sum() > 600 and blue.sum() > 600
