"""``report.html``: one page that shows a run as a whole, written beside the run's files.

The page is built from what the run hands over: the files it wrote (``outputs.written``), the
facts of the run (:class:`RunFacts`: command, model, device, precision, images, wall time) and
its manifest. Figures get a caption saying what they show and which way is better; the
leaderboard, sanity, detection and training tables become sortable tables; per-image panels
become a gallery (click to enlarge) and per-detection maps are grouped by image; CSV, JSON,
NPZ and Markdown files and the manifest are linked.

It opens offline from the folder: the HTML, CSS and JavaScript are written here, every link is
relative, and nothing is fetched from anywhere else. No template engine: a page this size reads
better as a few functions that return strings, each escaped where it is made.
"""
from __future__ import annotations

import csv
import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import outputs
from registry import FILL_STRATEGIES, TITLES

REPORT_NAME = "report.html"
FACTS_NAME = "run_facts.json"   # the same facts, for scripts (the results pages read them)
TABLE_ROWS = 300        # rows of a CSV shown in the page; the link opens all of them
EAGER_IMAGES = 48       # a gallery's first pictures load at once, the rest when scrolled to
LINKED = (".csv", ".json", ".npz", ".npy", ".md", ".txt", ".pth")


@dataclass
class RunFacts:
    """What a run was: filled by the command layer (``commands.note``) while a job runs."""

    command: str
    job: str = ""
    title: str = ""
    model: str | None = None
    random_weights: bool | None = None
    device: str | None = None
    precision: str | None = None
    images: int | None = None
    seconds: float | None = None
    accuracy: dict | None = None    # {"accuracy": %, "n": images, "per_class": {class: %}}
    extra: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Captions: what each kind of figure shows and how to read it, by its file name

BETTER = ("Deletion AUC: lower is better (the class's probability falls fast when the most "
          "salient pixels go). Insertion AUC: higher is better (it rises fast when they come "
          "back). The random map and the centre prior are the baselines a method must beat.")
_S = "(?P<s>" + "|".join(sorted(FILL_STRATEGIES, key=len, reverse=True)) + ")"
CAPTIONS: list[tuple[str, str]] = [
    (rf"^results_random_{_S}\.png$", "Deletion and insertion curves of the random-map "
     "baseline (hidden pixels: {s}): the floor every method must clear. " + BETTER),
    (rf"^results_centre_{_S}\.png$", "Deletion and insertion curves of the centre prior "
     "(hidden pixels: {s}), a map that knows only where objects usually sit. " + BETTER),
    (rf"^results_(?P<m>.+)_{_S}\.png$", "Deletion and insertion curves of {m} "
     "(hidden pixels: {s}), mean over the images with its band. " + BETTER),
    (rf"^comparison_{_S}\.png$", "Every method's deletion and insertion AUCs with 95% "
     "intervals (hidden pixels: {s}); baselines included. " + BETTER),
    (rf"^ranking_{_S}\.png$", ("The ranking by insertion minus deletion (higher is "
     "better), with intervals (hidden pixels: {s}); a method whose interval overlaps the "
     "random baseline's is not shown to beat it.")),
    (r"^confusion_matrix\.png$", ("Confusion matrix: rows are the true classes, columns the "
     "predicted ones; the diagonal holds the correct answers (darker is more).")),
    (r"^training_curves\.png$", ("Training curves per epoch: loss (lower is better) and "
     "accuracy or mAP on held-out data (higher is better).")),
    (r"^sanity\.png$", ("Model-randomisation sanity check: each method's maps as the network's "
     "layers are re-initialised from the top. A trustworthy map changes (low rank correlation "
     "and SSIM with the trained model's map); a map that stays the same does not depend on "
     "what the network learned.")),
    (r"^detections_grid\.png$", "Ground truth and detections of the first images of the set."),
    (r".*_grid\.png$", ("Grid of heatmaps over their images (red: where the map is high, the "
     "evidence the method found for the explained class); captions give the predicted and "
     "the true class.")),
    (r".*_boxes_by_layer\.png$", "Every detection's own map at every explained layer."),
]
PANEL = ("The image and the map over it (red: high, where the method found the evidence for "
         "the class named in the file).")
DETECTION = ("Detections (labels and scores) with the map of each explained detection at "
             "the named layer; red is where the detection's score drew its evidence.")
MISS = ("A missed object (ground truth), the detector's best proposal for it and that "
        "proposal's map: why the object was not found.")


def caption(path: Path) -> str:
    """What the figure ``path`` shows, from its name."""
    for pattern, text in CAPTIONS:
        match = re.match(pattern, path.name)
        if match:
            words = match.groupdict()
            if "m" in words:   # gradcam_layer3 -> Grad-CAM layer3
                method, _, layer = words["m"].partition("_")
                words["m"] = f"{TITLES.get(method, method)} {layer}".strip()
            return text.format(**words)
    return ""


# --------------------------------------------------------------------------------------------
# The page


STYLE = """body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em;
color:#222}h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ddd;
padding:3px 7px;text-align:right}th{background:#f3f3f3;cursor:pointer;user-select:none}
td:first-child,th:first-child{text-align:left}tr.base td{font-style:italic;color:#555}
th.up:after{content:" \\25B2"}th.down:after{content:" \\25BC"}figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#444;max-width:60em}
.gal{display:flex;flex-wrap:wrap;gap:8px}.gal figure{margin:0;width:230px;font-size:12px}
.gal img{width:230px;cursor:zoom-in}.facts td{text-align:left}small{color:#666}
#zoom{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);align-items:center;
justify-content:center;cursor:zoom-out}#zoom img{max-width:96vw;max-height:96vh;
background:#fff}"""

SCRIPT = """function sortBy(th){const t=th.closest('table'),b=t.tBodies[0],i=th.cellIndex,
up=!th.classList.contains('up');t.querySelectorAll('th').forEach(h=>h.classList.remove('up',
'down'));th.classList.add(up?'up':'down');const key=r=>{const c=r.cells[i],v=c.dataset.v??
c.textContent,n=parseFloat(v);return isNaN(n)?v:n};[...b.rows].sort((a,c)=>{const x=key(a),
y=key(c),d=typeof x==typeof y?(x<y?-1:x>y?1:0):(typeof x=='number'?-1:1);return up?d:-d})
.forEach(r=>b.appendChild(r))}
document.querySelectorAll('th').forEach(th=>th.onclick=()=>sortBy(th));
const z=document.getElementById('zoom');document.querySelectorAll('.gal img,figure.big img')
.forEach(im=>im.onclick=()=>{z.firstChild.src=im.src;z.style.display='flex'});
z.onclick=()=>{z.style.display='none'};"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(path: Path, folder: Path) -> str:
    return quote(Path(os.path.relpath(path, folder)).as_posix())


def _number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]],
           classes: Sequence[str] | None = None, caption_text: str = "") -> str:
    """A sortable table: a click on a header sorts by that column (numbers as numbers)."""
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        cells = "".join(
            f'<td data-v="{_esc(v[1])}">{_esc(v[0])}</td>' if isinstance(v, tuple)
            else f"<td>{_esc(_number(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    cap = f"<caption>{_esc(caption_text)}</caption>" if caption_text else ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _interval(row: dict, key: str) -> tuple[str, float]:
    """``0.215 [0.151, 0.285]`` for a leaderboard column, sorted by its mean."""
    mean = row.get(f"{key}_mean")
    if mean is None:
        return "", float("nan")
    low, high = row.get(f"{key}_ci95_low"), row.get(f"{key}_ci95_high")
    digits = 1 if "pct" in key else 3
    shown = f"{mean:.{digits}f}"
    if low is not None and high is not None:
        shown += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return shown, mean


LEADERBOARD_COLUMNS = (("deletion_auc", "Deletion AUC ↓"), ("insertion_auc", "Insertion AUC ↑"),
                       ("insertion_minus_deletion", "Ins − Del ↑"),
                       ("average_drop_pct", "Average Drop % ↓"),
                       ("increase_in_confidence_pct", "Increase in Conf. % ↑"))


def leaderboard_section(path: Path) -> str:
    """``comparison_S.json``: the leaderboard with 95% intervals, baselines in italics."""
    data = json.loads(path.read_text())
    rows = data.get("rows", [])
    header = ["Rank", "Method", "Layer", *[title for _, title in LEADERBOARD_COLUMNS]]
    body = [[(row.get("rank"), row.get("rank")), row.get("title", row.get("method")),
             row.get("layer", ""), *[_interval(row, key) for key, _ in LEADERBOARD_COLUMNS]]
            for row in rows]
    classes = ["base" if row.get("baseline") else "" for row in rows]
    notes = "".join(f"<li>{_esc(w)}</li>" for w in data.get("warnings", []))
    return (f"<h3>Leaderboard: {_esc(data.get('caption', path.stem))}</h3>"
            + _table(header, body, classes)
            + f"<p><small>Mean [95% interval] ({_esc(data.get('interval', {}).get('means', ''))}"
              f"). Baselines (random map, centre prior) in italics. ↓ lower is better, ↑ higher "
              f"is better; ranked by {_esc(data.get('ranked_by', ''))}. Click a header to sort."
              f"</small></p>" + (f"<ul>{notes}</ul>" if notes else ""))


def _flat(data: object, prefix: str = "") -> Iterable[tuple[str, object]]:
    """``(dotted.key, scalar)`` pairs of a JSON value; a list of scalars is one value."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _flat(value, f"{prefix}{key}.")
    elif isinstance(data, list) and all(not isinstance(v, dict | list) for v in data):
        yield prefix.rstrip("."), ", ".join(map(str, data))
    elif isinstance(data, list):
        for k, value in enumerate(data):
            yield from _flat(value, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), data


DETECTION_SCORES = (("pointing_game", "Pointing game ↑"), ("energy_in_box", "Energy in box ↑"),
                    ("discrimination.any.peak_in_own_box", "Peak in own box ↑"),
                    ("discrimination.any.energy_in_own_box", "Energy in own box ↑"))


def _score(summary: dict, key: str) -> tuple[str, float]:
    """``0.125 [0.022, 0.471]`` of a dotted key of a map's summary, sorted by its value."""
    *path, name = key.split(".")
    for part in path:
        summary = summary.get(part, {})
    value, (low, high) = summary.get(name), summary.get(f"{name}_ci95") or (None, None)
    if value is None:
        return "", float("nan")
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else ""), value


def detection_section(path: Path) -> str:
    """``voc_metrics.json``: AP per class and mAP; each layer's map scores beside the baseline
    maps' (italics), with 95% intervals; then the run's settings."""
    data = json.loads(path.read_text())
    title = (f"{data.get('method', '')}, {data.get('images', '')} images; mAP@0.5 "
             f"{_number(data.get('map'))}")
    parts = [f"<h3>Detection metrics ({_esc(title)})</h3>"]
    if isinstance(data.get("ap"), dict):
        parts.append(_table(["Class", "AP@0.5 ↑"], sorted(data["ap"].items())))
    rows = [(f"{data.get('method', '')} {layer}", summary)
            for layer, summary in data.get("layers", {}).items()]
    base = data.get("baselines", {})
    rows += [(f"{name} (baseline)", summary) for name, summary in base.items()
             if name != "other_detection"]
    rows += [(f"other detection's map {layer} (baseline)", summary)
             for layer, summary in base.get("other_detection", {}).items()]
    parts.append(_table(["Map", "Detections", *[title for _, title in DETECTION_SCORES]],
                        [[name, summary.get("detections"),
                          *[_score(summary, key) for key, _ in DETECTION_SCORES]]
                         for name, summary in rows],
                        ["base" if "baseline" in name else "" for name, _ in rows]))
    parts.append("<p><small>Higher is better for AP and for every map score; the baseline "
                 "maps (" + _esc("; ".join(f"{k}: {v}" for k, v in
                                          data.get("baseline_maps", {}).items()))
                 + ") show what a map that knows nothing scores. Click a header to sort."
                   "</small></p>")
    skip = {"ap", "layers", "baselines", "baseline_maps", "higher_is_better", "map"}
    parts.append(_table(["Setting", "Value"],
                        _flat({k: v for k, v in data.items() if k not in skip})))
    return "".join(parts)


def csv_section(path: Path, folder: Path) -> str:
    """Any CSV the run wrote, sortable; the first ``TABLE_ROWS`` rows."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    more = (f" (first {TABLE_ROWS} of {len(body)} rows)" if len(body) > TABLE_ROWS else "")
    return (f'<h3><a href="{_href(path, folder)}">{_esc(path.name)}</a>{more}</h3>'
            + _table(header, body[:TABLE_ROWS]))


def accuracy_section(accuracy: dict) -> str:
    per_class = accuracy.get("per_class", {})
    return (f"<h3>Accuracy: {accuracy['accuracy']:.2f}% of {accuracy.get('n', '?')} images</h3>"
            + _table(["Class", "Accuracy % ↑"], [(k, (f"{v:.2f}", v)) for k, v in
                                                 per_class.items()]))


def _figure(path: Path, folder: Path, text: str, big: bool = True, eager: bool = True,
            label: str | None = None) -> str:
    lazy = "" if eager else ' loading="lazy"'
    cls = ' class="big"' if big else ""
    return (f'<figure{cls}><img src="{_href(path, folder)}" alt="{_esc(path.name)}"{lazy}>'
            f"<figcaption><b>{_esc(label or path.name)}</b> {_esc(text)}</figcaption></figure>")


def _gallery(title: str, paths: Sequence[Path], folder: Path, text: str) -> str:
    items = "".join(_figure(p, folder, "", big=False, eager=k < EAGER_IMAGES,
                            label=f"{p.parent.name}/{p.name}") for k, p in enumerate(paths))
    head = f"<h3>{_esc(title)} ({len(paths)})</h3>" if title else ""
    return (f"{head}<p><small>{_esc(text)} Click a picture to enlarge it.</small></p>"
            f'<div class="gal">{items}</div>')


def _detection_stem(path: Path) -> str:
    """``000001`` of ``000001_gradcam_layer4.png``, ``000001_layer4_boxes/01_bag.png`` and
    ``000001_boxes_by_layer.png``."""
    if path.parent.name.endswith("_boxes"):
        return path.parent.name.rsplit("_", 2)[0]
    if path.name.endswith("_boxes_by_layer.png"):
        return path.name.removesuffix("_boxes_by_layer.png")
    for method in ("gradcampp", "xgradcam", "gradcam", "hirescam", "layercam", "drise"):
        if f"_{method}_" in path.name:
            return path.name.split(f"_{method}_")[0]
    return path.stem


def figures_sections(pngs: Sequence[Path], folder: Path) -> str:
    """Summary figures with captions, then galleries: per-image panels by folder, each
    image's detection panels (large) and per-detection maps (a gallery), missed objects."""
    summary, galleries, misses = [], {}, []
    detections: dict[str, tuple[list[Path], list[Path]]] = {}
    for path in pngs:
        text = caption(path)
        in_detection = path.parent.name == "detection" or path.parent.name.endswith("_boxes")
        if path.parent.name == "misses":
            misses.append(path)
        elif in_detection and path.name != "detections_grid.png":
            main, boxes = detections.setdefault(_detection_stem(path), ([], []))
            (boxes if path.parent.name.endswith("_boxes") else main).append(path)
        elif text:
            summary.append((path, text))
        else:
            galleries.setdefault(path.parent, []).append(path)
    parts = []
    if summary:
        parts.append("<h2>Figures</h2>" + "".join(_figure(p, folder, t) for p, t in summary))
    for where, paths in galleries.items():
        parts.append(_gallery(f"Panels in {os.path.relpath(where, folder)}", paths, folder,
                              PANEL))
    if detections:
        parts.append("<h2>Detections, by image</h2>")
    for stem, (main, boxes) in detections.items():
        parts.append(f"<h3>Image {_esc(stem)}</h3>")
        parts += [_figure(p, folder, caption(p) or DETECTION) for p in main]
        if boxes:
            parts.append(_gallery("", boxes, folder, "Each detection's own map, one per "
                                                     "detection and layer."))
    if misses:
        parts.append(_gallery("Missed objects", misses, folder, MISS))
    return "".join(parts)


def facts_section(facts: RunFacts) -> str:
    weights = {True: " (random weights)", False: "", None: ""}[facts.random_weights]
    rows = [("Command", facts.command), ("Job", f"{facts.job}: {facts.title}"),
            ("Model", (facts.model or "") + weights), ("Device", facts.device),
            ("Precision", facts.precision), ("Images", facts.images),
            ("Wall time", None if facts.seconds is None else f"{facts.seconds:.1f} s"),
            *facts.extra.items()]
    cells = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows
                    if v not in (None, ""))
    return f'<table class="facts">{cells}</table>'


def render(folder: Path, files: Sequence[Path], facts: RunFacts, manifest: Path | None) -> str:
    """The page for the run's ``files`` (deduplicated, in the order written)."""
    files = [p for p in dict.fromkeys(Path(f) for f in files) if p.is_file()]
    tables = []
    if facts.accuracy:
        tables.append(accuracy_section(facts.accuracy))
    for path in files:
        if re.match(r"comparison_\w+\.json$", path.name):
            tables.append(leaderboard_section(path))
        elif path.name == "voc_metrics.json":
            tables.append(detection_section(path))
        elif path.suffix == ".csv" and not path.name.startswith("comparison_"):
            tables.append(csv_section(path, folder))
    pngs = [p for p in files if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    links = [p for p in files if p.suffix.lower() in LINKED]
    if manifest is not None:
        links.append(manifest)
    link_items = "".join(f'<li><a href="{_href(p, folder)}">{_esc(os.path.relpath(p, folder))}'
                         f"</a></li>" for p in links)
    title = f"Run report: {facts.job or 'run'}"
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{_esc(title)}</h1>{facts_section(facts)}"
            + (f"<h2>Tables</h2>{''.join(tables)}" if tables else "")
            + figures_sections(pngs, folder)
            + (f"<h2>Files</h2><ul>{link_items}</ul>" if link_items else "")
            + f'<div id="zoom"><img alt="enlarged"></div><script>{SCRIPT}</script>'
            "</body></html>\n")


def write_facts(folder: str | os.PathLike, facts: RunFacts) -> Path:
    """Write ``folder/run_facts.json``: the run's facts, the machine (CPU model, cores, torch)
    and the date, so that a page written later from the run's files can say what ran where."""
    import datetime

    from runtime import machine_facts
    record = {**asdict(facts), "machine": machine_facts(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    path = Path(folder) / FACTS_NAME
    outputs.write_text(path, json.dumps(record, indent=2, default=str) + "\n")   # a Path: text
    return path


def write_report(folder: str | os.PathLike, files: Sequence[str | os.PathLike],
                 facts: RunFacts, manifest: str | os.PathLike | None = None) -> Path:
    """Write ``folder/report.html`` (atomically, recorded as one of the run's files) for a
    run that wrote ``files``, described by ``facts``, listed in ``manifest``."""
    folder = Path(folder)
    path = folder / REPORT_NAME
    page = render(folder, [Path(f) for f in files], facts,
                  None if manifest is None else Path(manifest))
    outputs.write_text(path, page)
    return path
