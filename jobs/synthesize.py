"""Ray Job entrypoint for `adapt synthesize`: `python -m jobs.synthesize --config CONFIG [key.sub=value ...]`."""

from jobs.entry import run_verb

if __name__ == "__main__":
    raise SystemExit(run_verb("synthesize"))
