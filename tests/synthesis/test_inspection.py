"""`adapt inspect` (engine/synthesis/inspection.py) on a hand-made synthesis folder whose numbers are known, and its
HTML opened in a real browser: headless Chromium (Debian's `chromium`) renders the page to a screenshot, which must
show the plots and the example images.

Chromium is a system package: .ci/run installs it. Without it the browser test fails under CI (.ci/run sets
`ADAPT_CI`) and is skipped elsewhere, naming the package: a developer without root still gets a green suite, and CI
never passes without having rendered the page.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.cli import main
from engine.records import EXAMPLE_SCHEMA, QUARANTINE_FIELDS
from engine.synthesis.inspection import inspect_run, write_inspection
from tests.fixtures import png_bytes

MAGENTA = (240, 20, 240)  # a colour no plot uses
QUESTIONS = ["What color is the star?", "What color is the star", "How many circles are there?",
             "Is the square red?", "Where is the triangle?", "Why is the sky grey?"]
CAPTIONS = ["A red star on grey.", "A red star on grey.", "Three circles.", "A square.", "A triangle, top left.",
            "Grey sky."]
KEPT = [True, True, False, False, True, False]
REASONS = [None, None, "inconsistent", "open_ended", None, "inconsistent"]
SHARDS = ["a.parquet", "a.parquet", "b.parquet", "b.parquet", "a.parquet", "b.parquet"]
TASK_KINDS = ["forward", "forward", None, None, "question_from_answer", None]


def synthesis_tables() -> dict[str, pa.Table]:
    ids = [f"row-{i}" for i in range(6)]
    instructions = [{"id": id_, "source_id": id_,
                     "images": [{"bytes": png_bytes(MAGENTA if i < 2 else (30, 30, 220), size=48), "path": None}],
                     "kind": "caption+synthetic" if KEPT[i] else "caption", "shard": SHARDS[i],
                     "messages": [{"role": "user", "content": "<image>\nDescribe the image."},
                                  {"role": "assistant", "content": CAPTIONS[i]}]} for i, id_ in enumerate(ids)]
    tasks = [{"id": f"{id_}#0", "source_id": id_, "question": QUESTIONS[i], "precise": "red",
              "informative": "The star is red, as its fill shows.", "consistency": "yes" if KEPT[i] else "no",
              "kept": KEPT[i], "reason": REASONS[i], "shard": SHARDS[i], "task_kind": TASK_KINDS[i]}
             for i, id_ in enumerate(ids)]
    quarantine_schema = pa.schema([*QUARANTINE_FIELDS, pa.field("shard", pa.string()), pa.field("image", pa.binary())])
    quarantine = [{"id": "bad-1", "stage": "validate", "reason": "corrupt_image", "shard": "a.parquet"},
                  {"id": "bad-2", "stage": "validate", "reason": "empty_caption", "shard": "b.parquet"}]
    return {"instructions": pa.Table.from_pylist(instructions, schema=EXAMPLE_SCHEMA),
            "tasks": pa.Table.from_pylist(tasks),
            "quarantine": pa.Table.from_pylist(quarantine, schema=quarantine_schema)}


def write_run(url: str) -> str:
    fs, root = fsspec.core.url_to_fs(url)
    for name, table in synthesis_tables().items():
        fs.makedirs(f"{root}/synthesis/{name}", exist_ok=True)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        fs.pipe(f"{root}/synthesis/{name}/part-0.parquet", buffer.getvalue())
    fs.pipe(f"{root}/synthesis/manifest.json", json.dumps({"rows_in": 8, "tasks_missing": {"no_question": 1},
                                                            "rows_dropped": {}}).encode())
    return url


def test_the_report_measures_kinds_lengths_keep_rate_reasons_and_near_duplicates(tmp_path):
    report = inspect_run(write_run(str(tmp_path / "run")))
    assert report["counts"] == {"rows_in": 8, "examples": 6, "rows_dropped": 0, "quarantined": 2,
                                "tasks_synthesized": 6, "tasks_kept": 3, "keep_rate": 0.5}
    assert report["question_types"] == {"what": 2, "how": 1, "is": 1, "where": 1, "why": 1}
    assert report["categories"]["task_kind"] == {"(none)": 3, "forward": 2, "question_from_answer": 1}
    assert report["consistency"] == {"yes": 3, "no": 3}
    assert report["lengths"]["question"]["n"] == 6 and report["lengths"]["question"]["max"] == 5
    assert report["dropped_by_shard"] == {"b.parquet": {"inconsistent": 2, "open_ended": 1}}
    assert report["quarantined_by_shard"] == {"a.parquet": {"corrupt_image": 1}, "b.parquet": {"empty_caption": 1}}
    # the second question differs from the first by its "?": a near-duplicate; so is the repeated caption
    assert report["near_duplicates"]["questions"]["near_duplicates"] == 1
    assert report["near_duplicates"]["captions"]["near_duplicate_rate"] == round(1 / 6, 4)
    assert report["tasks_missing"] == {"no_question": 1}
    forward = report["examples"]["forward"]
    assert [row["id"] for row in forward] == ["row-0#0", "row-1#0"]
    assert forward[0]["image"].startswith("data:image/png;base64,")


def test_report_files_on_object_storage_and_the_json_twin(tmp_path):
    url = write_run("memory://inspect-test/run")
    folder = write_inspection(url)
    assert folder == "memory://inspect-test/run/synthesis/inspection"
    fs = fsspec.filesystem("memory")
    names = {path.rsplit("/", 1)[-1] for path in fs.ls("/inspect-test/run/synthesis/inspection", detail=False)}
    assert names == {"report.html", "report.json", "overview.png", "lengths.png", "reasons.png"}
    twin = json.loads(fs.cat("/inspect-test/run/synthesis/inspection/report.json"))
    assert twin["counts"]["keep_rate"] == 0.5 and "image" not in twin["examples"]["forward"][0]
    page = fs.cat("/inspect-test/run/synthesis/inspection/report.html").decode()
    assert page.count("data:image/png;base64,") == 3 + 6  # three plots, six example tasks (three kinds)


def test_inspect_verb_writes_the_report_and_refuses_a_folder_without_synthesis(tmp_path, capsys):
    run = write_run(str(tmp_path / "run"))
    assert main(["inspect", run]) == 0
    assert f"{run}/synthesis/inspection/report.html" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "RUN_DIR" in capsys.readouterr().err


def browser() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(name)), None)
    if found is None:
        reason = "headless Chromium is needed to render the report: apt-get install chromium (.ci/run does)"
        if os.environ.get("ADAPT_CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def test_the_report_renders_in_headless_chromium(tmp_path):
    chromium = browser()
    folder = Path(write_inspection(write_run(str(tmp_path / "run"))))
    screenshot = tmp_path / "page.png"
    # Flags: no sandbox (CI runs as root), no GPU, and nothing that reaches the network or writes a shared profile.
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1300,3200",
                    (folder / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert pixels.shape == (3200, 1300, 3)
    assert pixels.std() > 20  # not a blank page
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # text and plots cover part of it
    magenta = (abs(pixels - MAGENTA).max(axis=2) < 10).sum()
    assert magenta > 30 * 30  # the example images (magenta thumbnails) were decoded and drawn
