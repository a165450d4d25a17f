"""Ray Job entrypoint for `adapt evaluate`: `python -m jobs.evaluate --config CONFIG [key.sub=value ...]`."""

from jobs.entry import run_verb

if __name__ == "__main__":
    raise SystemExit(run_verb("evaluate"))
