"""The shared body of every entrypoint: `--config CONFIG [overrides...]` in, the `adapt` verb's exit code out."""

from __future__ import annotations

import argparse

from engine.cli import main as adapt


def run_verb(verb: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{verb}", description=f"Ray Job entrypoint for `adapt {verb}`.")
    parser.add_argument("--config", required=True, help="YAML config; set cluster.address: auto to use the job's cluster")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    return adapt([verb, args.config, *args.overrides])
