"""Evaluation of adapted models on the domain benchmarks: metrics, task scorers, runner and report."""
