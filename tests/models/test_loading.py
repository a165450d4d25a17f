"""engine/models/loading.py: torch and transformers load with the first model or processor, not with the module."""

from __future__ import annotations

import subprocess
import sys


def test_the_stream_drivers_and_their_row_steps_import_without_torch_or_transformers():
    # Every Ray worker that runs a row step of a stream imports these modules; torch and transformers would cost each
    # of them seconds of a core (engine.models.loading imports them where it loads).
    probe = ("import sys, engine.synthesis.pipeline, engine.evaluation.runner, engine.cli; "
             "print(sorted({'torch', 'transformers', 'vllm'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "[]"
