"""Ray Job entrypoint for `adapt tune-synthesizer`:
`python -m jobs.tune_synthesizer --config CONFIG [key.sub=value ...]`."""

from jobs.entry import run_verb

if __name__ == "__main__":
    raise SystemExit(run_verb("tune-synthesizer"))
