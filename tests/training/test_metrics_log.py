"""metrics.csv: rows appended per logged step, cut back to the checkpoint's step on resume."""

from __future__ import annotations

from engine.training.metrics_log import MetricsLog, read_metrics


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    url = str(tmp_path / "training" / "metrics.csv")
    log = MetricsLog(url, resume_step=0)
    for step in range(1, 7):
        log.append({"step": step, "loss": 1.0 / step})
    MetricsLog(url, resume_step=4).append({"step": 5, "loss": 0.5})
    assert [(row["step"], row["loss"]) for row in read_metrics(url)] == [
        ("1", "1.0"), ("2", "0.5"), ("3", "0.3333333333333333"), ("4", "0.25"), ("5", "0.5")]
