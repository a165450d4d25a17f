"""Visual-instruction synthesis: synthesizer prompt and parser, rule-based baseline, consistency filter, compose."""
