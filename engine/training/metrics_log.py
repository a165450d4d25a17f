"""metrics.csv of a training run: one row per logged step, on any filesystem, cut back to the checkpoint on resume."""

from __future__ import annotations

import csv
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

METRIC_COLUMNS = ("step", "phase", "epoch", "loss", "lr", "vision_lr", "grad_norm", "samples", "tokens",
                  "samples_per_s", "tokens_per_s", "elapsed_s", "truncated", "dropped", "data_crc")


class MetricsLog:
    """metrics.csv, written by rank 0. On resume the rows after the checkpoint's step are dropped first, since those
    steps are trained again."""

    def __init__(self, url: str, resume_step: int):
        self.fs, self.path = fsspec.core.url_to_fs(url)
        rows = [row for row in read_metrics(url) if int(row["step"]) <= resume_step] if resume_step else []
        self.rows = rows
        self._write_all()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if isinstance(self.fs, LocalFileSystem):
            with self.fs.open(self.path, "a") as file:
                csv.DictWriter(file, METRIC_COLUMNS).writerow(row)
        else:  # object stores cannot append: rewrite the (small) file
            self._write_all()

    def _write_all(self) -> None:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(self.path, "w") as file:
            writer = csv.DictWriter(file, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)


def read_metrics(url: str) -> list[dict[str, str]]:
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return []
    with fs.open(path, "r") as file:
        return list(csv.DictReader(file))
