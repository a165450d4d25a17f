"""`adapt inspect`: a report on a run's synthesized data, read before spending GPU-days training on it.

    {output_dir}/synthesis/inspection/   report.html (self-contained: plots and example images embedded)
                                         report.json (the same numbers), overview.png, lengths.png, reasons.png

What it measures, from the published sets (instructions/, tasks/, quarantine/) and manifest.json:
- task kinds: question types (the question's first word) and the values of whichever category columns the tasks
  carry (`task_kind`: forward, question_from_answer, ...; `compose_rule`);
- lengths in words: questions, precise and informative answers, captions;
- consistency labels and the keep rate (kept / synthesized tasks);
- why tasks were dropped and rows quarantined, per input shard;
- near-duplicates among questions and among captions: the share of texts whose MinHash (character 5-grams) is
  within Jaccard 0.8 of an earlier text's, i.e. what near-deduplication would remove;
- example tasks per kind with their images.

Plain Python over pyarrow: no Ray. The run directory may be local or an fsspec URL (RunDir).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from PIL import Image

from engine.io.run_dir import INSPECTION, INSTRUCTIONS, MANIFEST, QUARANTINE, SYNTHESIS, TASKS, Folder, RunDir, StageDir
from engine.records import image_bytes

# Category columns tasks may carry (records.COMPOSE_FIELDS); those present are counted, and the first present groups
# the example tasks (question types do when none is).
CATEGORY_COLUMNS = ("task_kind", "compose_rule")
NO_CATEGORY = "(none)"
TOP_QUESTION_TYPES = 12
EXAMPLES_PER_KIND = 3
MAX_KINDS_SHOWN = 8
THUMBNAIL_SIDE = 160
# Near-duplicates: MinHash over character shingles suits texts as short as questions (a handful of words).
SHINGLE_CHARS = 5
NUM_PERM = 64
NEAR_DUPLICATE_JACCARD = 0.8
# About 0.1 ms a text (5 s for this many on one core): beyond it an evenly spaced sample is measured.
MAX_DEDUP_TEXTS = 50_000


# ---------------------------------------------------------------------------------------------------------------------
# Reading


def _read(stage: StageDir, name: str, columns: Sequence[str]) -> pa.Table:
    """The named published set's columns that exist (an empty table when the set is missing)."""
    if not stage.exists(name):
        return pa.table({})
    dataset = pads.dataset(stage.path(name), filesystem=stage.fs, format="parquet")
    return dataset.to_table(columns=[column for column in columns if column in dataset.schema.names])


def _column(table: pa.Table, name: str) -> list[Any]:
    return table[name].to_pylist() if name in table.column_names else []


def caption_of(messages: Sequence[dict[str, str]] | None) -> str | None:
    """The caption of a published example: compose writes the caption exchange first (engine.synthesis.examples), so
    it is the first assistant turn."""
    return next((message["content"] for message in messages or [] if message["role"] == "assistant"), None)


def question_type(question: str | None) -> str:
    """The question's first word, lower-cased ("What color is ..." -> "what")."""
    match = re.match(r"[^\W\d_]+(?:'[^\W\d_]+)?", (question or "").strip())
    return match.group(0).lower() if match else "(none)"


# ---------------------------------------------------------------------------------------------------------------------
# Measures


def word_lengths(texts: Iterable[str | None]) -> dict[str, Any]:
    """Summary and histogram of the texts' word counts (missing texts left out)."""
    lengths = np.array([len(text.split()) for text in texts if text is not None])
    if not len(lengths):
        return {"n": 0}
    low, high = int(lengths.min()), int(lengths.max())
    # one bin per word count while that stays readable, 20 bins beyond
    counts, edges = np.histogram(lengths, bins=np.arange(low, high + 2) - 0.5 if high - low < 40 else 20)
    return {"n": int(len(lengths)), "mean": round(float(lengths.mean()), 2), "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()),
            "histogram": {"edges": [round(float(edge), 2) for edge in edges], "counts": counts.tolist()}}


def _shingles(text: str) -> set[bytes]:
    normalized = " ".join(text.lower().split())
    if len(normalized) <= SHINGLE_CHARS:
        return {normalized.encode()}
    return {normalized[i:i + SHINGLE_CHARS].encode() for i in range(len(normalized) - SHINGLE_CHARS + 1)}


def near_duplicates(texts: Sequence[str | None]) -> dict[str, Any]:
    """The share of texts that near-duplicate an earlier one (estimated Jaccard >= 0.8 of character 5-grams)."""
    from datasketch import MinHash, MinHashLSH

    texts = [text for text in texts if text]
    if len(texts) > MAX_DEDUP_TEXTS:
        texts = [texts[int(i)] for i in np.linspace(0, len(texts) - 1, MAX_DEDUP_TEXTS)]
    result = {"n": len(texts), "jaccard_threshold": NEAR_DUPLICATE_JACCARD, "near_duplicates": 0,
              "near_duplicate_rate": 0.0}
    if not texts:
        return result
    # seed fixed: the same data always gets the same numbers
    hashes = MinHash.bulk([_shingles(text) for text in texts], num_perm=NUM_PERM, seed=1)
    index = MinHashLSH(threshold=NEAR_DUPLICATE_JACCARD, num_perm=NUM_PERM)
    for position, signature in enumerate(hashes):
        # LSH proposes candidates; the estimated Jaccard decides, so band collisions below the threshold don't count
        if any(hashes[int(key)].jaccard(signature) >= NEAR_DUPLICATE_JACCARD for key in index.query(signature)):
            result["near_duplicates"] += 1
        index.insert(str(position), signature)
    result["near_duplicate_rate"] = round(result["near_duplicates"] / len(texts), 4)
    return result


def reasons_by_shard(shards: Sequence[str | None], reasons: Sequence[str | None]) -> dict[str, dict[str, int]]:
    """{shard: {reason: count}} over rows that have a reason."""
    table: dict[str, Counter] = {}
    for shard, reason in zip(shards, reasons, strict=True):
        if reason is not None:
            table.setdefault(shard or "(unknown)", Counter())[reason] += 1
    return {shard: dict(counts.most_common()) for shard, counts in sorted(table.items())}


def categories(tasks: pa.Table) -> dict[str, dict[str, int]]:
    """{column: {value: count}} for each category column the tasks carry (a missing value counts as "(none)")."""
    return {column: dict(Counter(NO_CATEGORY if value is None else str(value)
                                 for value in _column(tasks, column)).most_common())
            for column in CATEGORY_COLUMNS if column in tasks.column_names}


def _kinds(tasks: pa.Table) -> list[str]:
    """Each task's group for the examples: its first category column's value, else its question type."""
    column = next((name for name in CATEGORY_COLUMNS if name in tasks.column_names), None)
    if column is not None:
        return [NO_CATEGORY if value is None else str(value) for value in _column(tasks, column)]
    return [question_type(question) for question in _column(tasks, "question")]


# ---------------------------------------------------------------------------------------------------------------------
# Examples with their images


def _thumbnail(data: bytes | None) -> str | None:
    """A small PNG of the image as a data URL, or None when it does not decode."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _images_by_id(stage: StageDir, ids: Sequence[str]) -> dict[str, str | None]:
    """The first image of the named instruction rows, as thumbnails (only those rows' images are read)."""
    if not ids or not stage.exists(INSTRUCTIONS):
        return {}
    dataset = pads.dataset(stage.path(INSTRUCTIONS), filesystem=stage.fs, format="parquet")
    table = dataset.to_table(columns=["id", "images"], filter=pc.field("id").isin(list(ids)))
    return {row["id"]: _thumbnail(image_bytes((row["images"] or [None])[0])) for row in table.to_pylist()}


def example_tasks(stage: StageDir, tasks: pa.Table, kinds: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Up to EXAMPLES_PER_KIND tasks of each of the most common kinds, the first by id (a stable choice)."""
    fields = [name for name in ("id", "source_id", "question", "precise", "informative", "consistency", "kept",
                                "reason") if name in tasks.column_names]
    chosen: dict[str, list[int]] = {kind: [] for kind, _ in Counter(kinds).most_common(MAX_KINDS_SHOWN)}
    ids = _column(tasks, "id")
    for position in sorted(range(len(kinds)), key=lambda i: ids[i] or ""):
        group = chosen.get(kinds[position])
        if group is not None and len(group) < EXAMPLES_PER_KIND:
            group.append(position)
    examples = {kind: [{**{name: tasks[name][i].as_py() for name in fields}, "kind": kind} for i in positions]
                for kind, positions in chosen.items()}
    images = _images_by_id(stage, [row["source_id"] for rows in examples.values() for row in rows])
    for rows in examples.values():
        for row in rows:
            row["image"] = images.get(row["source_id"])
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# The report


def inspect_run(run_dir: str) -> dict[str, Any]:
    """Every measure of the report (JSON-ready; `examples` carry their thumbnails as data URLs)."""
    stage = RunDir(run_dir).stage(SYNTHESIS)
    manifest = stage.read_json(MANIFEST) or {}
    tasks = _read(stage, TASKS, ["id", "source_id", "question", "precise", "informative", "consistency", "kept",
                                 "reason", "shard", *CATEGORY_COLUMNS])
    instructions = _read(stage, INSTRUCTIONS, ["kind", "messages"])
    quarantine = _read(stage, QUARANTINE, ["reason", "shard"])
    kinds = _kinds(tasks)
    kept = [bool(value) for value in _column(tasks, "kept")]
    dropped_reasons = [None if keep else reason for keep, reason in zip(kept, _column(tasks, "reason"))]
    captions = [caption_of(messages) for messages in _column(instructions, "messages")]
    questions = _column(tasks, "question")
    return {
        "run_dir": run_dir,
        "counts": {
            "rows_in": manifest.get("rows_in"),
            "examples": instructions.num_rows,
            "rows_dropped": sum(manifest.get("rows_dropped", {}).values()),
            "quarantined": quarantine.num_rows,
            "tasks_synthesized": tasks.num_rows,
            "tasks_kept": sum(kept),
            "keep_rate": round(sum(kept) / len(kept), 4) if kept else None,
        },
        "examples_by_kind": dict(Counter(_column(instructions, "kind")).most_common()),
        "question_types": dict(Counter(question_type(question) for question in questions).most_common()),
        "categories": categories(tasks),
        "lengths": {"question": word_lengths(questions), "precise": word_lengths(_column(tasks, "precise")),
                    "informative": word_lengths(_column(tasks, "informative")), "caption": word_lengths(captions)},
        "consistency": dict(Counter(str(label) for label in _column(tasks, "consistency")).most_common()),
        "tasks_missing": manifest.get("tasks_missing", {}),
        "dropped_by_shard": reasons_by_shard(_column(tasks, "shard"), dropped_reasons),
        "quarantined_by_shard": reasons_by_shard(_column(quarantine, "shard"), _column(quarantine, "reason")),
        "near_duplicates": {"questions": near_duplicates(questions), "captions": near_duplicates(captions)},
        "examples": example_tasks(stage, tasks, kinds),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Plots


def _bars(axes, counts: dict[str, int], title: str, horizontal: bool = True) -> None:
    axes.set_title(title, fontsize=10)
    if not counts:
        axes.text(0.5, 0.5, "none", ha="center", va="center", transform=axes.transAxes, color="grey")
        axes.set_axis_off()
        return
    labels, values = list(counts)[::-1], list(counts.values())[::-1]
    bars = axes.barh(labels, values, color="#4c72b0") if horizontal else axes.bar(labels, values, color="#4c72b0")
    axes.bar_label(bars, fontsize=7)
    axes.tick_params(labelsize=8)


def _top(counts: dict[str, int], limit: int) -> dict[str, int]:
    items = list(counts.items())
    top = dict(items[:limit])
    if len(items) > limit:
        top["(other)"] = sum(value for _, value in items[limit:])
    return top


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def render_figures(report: dict[str, Any]) -> dict[str, bytes]:
    """overview.png (question types, task kinds or example kinds, consistency), lengths.png (word-count
    histograms), reasons.png (drop and quarantine reasons per shard)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    _bars(axes[0], _top(report["question_types"], TOP_QUESTION_TYPES), "Question types (first word)")
    column, counts = next(iter(report["categories"].items()), ("kind", report["examples_by_kind"]))
    _bars(axes[1], _top(counts, TOP_QUESTION_TYPES), f"Tasks by {column}" if column != "kind"
          else "Training examples by kind")
    keep_rate = report["counts"]["keep_rate"]
    _bars(axes[2], report["consistency"],
          "Consistency labels" + ("" if keep_rate is None else f" (keep rate {keep_rate:.0%})"))
    overview = _png(figure)

    figure, axes = plt.subplots(1, 4, figsize=(13, 3))
    for panel, (name, lengths) in zip(axes, report["lengths"].items()):
        panel.set_title(f"{name} length (words)", fontsize=10)
        if lengths["n"]:
            edges, counts = lengths["histogram"]["edges"], lengths["histogram"]["counts"]
            panel.stairs(counts, edges, fill=True, color="#55a868")
            panel.tick_params(labelsize=8)
        else:
            panel.text(0.5, 0.5, "none", ha="center", va="center", transform=panel.transAxes, color="grey")
            panel.set_axis_off()
    lengths = _png(figure)

    figure, axes = plt.subplots(1, 2, figsize=(13, 3.5))
    for panel, (key, title) in zip(axes, (("dropped_by_shard", "Dropped tasks by shard and reason"),
                                          ("quarantined_by_shard", "Quarantined rows by shard and reason"))):
        _stacked(panel, report[key], title)
    return {"overview.png": overview, "lengths.png": lengths, "reasons.png": _png(figure)}


def _stacked(axes, table: dict[str, dict[str, int]], title: str) -> None:
    axes.set_title(title, fontsize=10)
    if not table:
        axes.text(0.5, 0.5, "none", ha="center", va="center", transform=axes.transAxes, color="grey")
        axes.set_axis_off()
        return
    shards = list(table)
    reasons = sorted({reason for counts in table.values() for reason in counts})
    left = np.zeros(len(shards))
    for reason in reasons:
        values = np.array([table[shard].get(reason, 0) for shard in shards])
        axes.barh(shards, values, left=left, label=reason)
        left += values
    axes.legend(fontsize=7)
    axes.tick_params(labelsize=8)


# ---------------------------------------------------------------------------------------------------------------------
# HTML


def _table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{'&ndash;' if cell is None else html.escape(str(cell))}</td>"
                                    for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _example_card(row: dict[str, Any]) -> str:
    image = (f'<img src="{row["image"]}" alt="image of {html.escape(str(row["source_id"]))}">' if row.get("image")
             else '<div class="noimage">no image</div>')
    verdict = "kept" if row.get("kept") else f"dropped ({row.get('reason')})"
    fields = "".join(f"<p><b>{label}</b> {html.escape(str(row.get(key)))}</p>" for label, key in
                     (("Q", "question"), ("precise", "precise"), ("informative", "informative")))
    return (f'<div class="card">{image}<div>{fields}<p class="{"kept" if row.get("kept") else "dropped"}">'
            f'{html.escape(str(row.get("consistency")))} &middot; {html.escape(verdict)}</p></div></div>')


_STYLE = """body{font-family:sans-serif;margin:24px;color:#222;background:#fff;max-width:1300px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#eef}img.plot{max-width:100%}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{display:flex;gap:8px;border:1px solid #ddd;padding:8px;width:560px;font-size:13px}
.card p{margin:2px 0}.kept{color:#1a7f37}.dropped{color:#b42318}.noimage{width:160px;color:#888}"""


def render_html(report: dict[str, Any], figures: dict[str, bytes]) -> str:
    counts = report["counts"]
    plots = "".join(f'<img class="plot" alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                    for name, data in figures.items())
    duplicates = _table(((name, value["n"], value["near_duplicates"], f"{value['near_duplicate_rate']:.2%}")
                         for name, value in report["near_duplicates"].items()),
                        ("texts", "measured", f"near-duplicates (Jaccard >= {NEAR_DUPLICATE_JACCARD})", "rate"))
    lengths = _table(((name, value["n"], value.get("mean"), value.get("median"), value.get("p95"), value.get("max"))
                      for name, value in report["lengths"].items()), ("text", "n", "mean", "median", "p95", "max"))
    reasons = "".join(
        f"<h3>{title}</h3>" + (_table(((shard, reason, n) for shard, by in report[key].items()
                                       for reason, n in by.items()), ("shard", "reason", "rows"))
                               if report[key] else "<p>none</p>")
        for key, title in (("dropped_by_shard", "Dropped tasks"), ("quarantined_by_shard", "Quarantined rows")))
    missing = (_table(report["tasks_missing"].items(), ("reason", "rows")) if report["tasks_missing"]
               else "<p>none</p>")
    kinds = _table(_top(report["question_types"], TOP_QUESTION_TYPES).items(), ("question type", "tasks")) + "".join(
        _table(counts.items(), (column, "tasks")) for column, counts in report["categories"].items())
    examples = "".join(f"<h3>{html.escape(kind)}</h3><div class=\"cards\">"
                       + "".join(_example_card(row) for row in rows) + "</div>"
                       for kind, rows in report["examples"].items()) or "<p>no tasks</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Synthesized data: {html.escape(report['run_dir'])}</title>
<style>{_STYLE}</style></head><body>
<h1>Synthesized data</h1><p>{html.escape(report['run_dir'])}</p>
{_table([(key.replace('_', ' '), value) for key, value in counts.items()], ('', 'value'))}
{plots}
<h2>Task kinds</h2>{kinds}
<h2>Lengths (words)</h2>{lengths}
<h2>Near-duplicates</h2>{duplicates}
<h2>Rows without a task</h2>{missing}
<h2>Dropped and quarantined, by shard</h2>{reasons}
<h2>Example tasks by kind</h2>{examples}
</body></html>
"""


def write_inspection(run_dir: str, out: str | None = None) -> str:
    """Inspect a run directory and write the report; returns the folder it was written to (a path or URL)."""
    report = inspect_run(run_dir)
    folder: Folder = Folder(out) if out else RunDir(run_dir).stage(SYNTHESIS)
    parts = () if out else (INSPECTION,)
    figures = render_figures(report)
    contents = {"report.html": render_html(report, figures).encode(), **figures}
    examples = {kind: [{key: value for key, value in row.items() if key != "image"} for row in rows]
                for kind, rows in report["examples"].items()}
    contents["report.json"] = (json.dumps({**report, "examples": examples}, indent=2) + "\n").encode()
    folder.fs.makedirs(folder.path(*parts), exist_ok=True)
    for name, data in contents.items():
        with folder.fs.open(folder.path(*parts, name), "wb") as file:
            file.write(data)
    return folder.url(*parts)
