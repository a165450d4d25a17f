"""Ray Job entrypoint for `adapt ablate`: `python -m jobs.ablate --config CONFIG [key.sub=value ...]`."""

from jobs.entry import run_verb

if __name__ == "__main__":
    raise SystemExit(run_verb("ablate"))
