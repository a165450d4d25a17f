"""Ray Job entrypoint for `adapt train`: `python -m jobs.train --config CONFIG [key.sub=value ...]`."""

from jobs.entry import run_verb

if __name__ == "__main__":
    raise SystemExit(run_verb("train"))
