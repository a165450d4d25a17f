"""Ray Job entrypoint for `adapt run`: `python -m jobs.run --config CONFIG [key.sub=value ...]`."""

from jobs.entry import run_verb

if __name__ == "__main__":
    raise SystemExit(run_verb("run"))
