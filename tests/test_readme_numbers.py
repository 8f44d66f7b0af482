"""The README's headline numbers of the shipped models are their reports' numbers: each number
in a row of "The models that ship" appears in the report that row links to."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shipped_rows() -> list[tuple[str, str, Path]]:
    """``(model, headline, report)`` of each row of the README's shipped-models table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The models that ship", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        link = re.search(r"\]\((docs/results/[^)]+\.md)\)", line)
        if len(cells) == 3 and link:
            rows.append((cells[0], cells[1], ROOT / link.group(1)))
    return rows


def numbers(text: str) -> list[str]:
    """The measured numbers of a headline: decimals and percentages, not counts of things
    (``300 test scenes``, ``1,000 images``)."""
    return re.findall(r"\d+\.\d+%?|\d+%", text)


def test_the_table_has_the_shipped_models():
    rows = shipped_rows()
    assert len(rows) >= 3
    assert all(report.exists() for _, _, report in rows), rows


@pytest.mark.parametrize("model, headline, report", shipped_rows(),
                         ids=lambda v: v.name if isinstance(v, Path) else None)
def test_each_headline_number_is_in_its_report(model, headline, report):
    found = numbers(headline)
    assert found, f"no number in the headline of {model}"
    text = report.read_text()
    for number in found:
        plain = number.rstrip("%")
        assert re.search(rf"(?<![\d.]){re.escape(plain)}(?!\d)", text), \
            f"{number} ({model}) is not in {report.name}"


def test_the_cnn_against_vit_table_quotes_its_page():
    """Every number of the README's CNN-against-ViT table is in the page the comparison script
    writes from its runs."""
    text = (ROOT / "README.md").read_text()
    section = text.split("**A CNN against a vision transformer**", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) >= 4, section
    page = (ROOT / "docs" / "results" / "cnn_vs_vit.md").read_text()
    found = [n for row in rows[2:] for n in numbers(row)]
    assert found, rows
    for number in found:
        plain = number.rstrip("%")
        assert re.search(rf"(?<![\d.]){re.escape(plain)}(?!\d)", page), \
            f"{number} is not in docs/results/cnn_vs_vit.md"
