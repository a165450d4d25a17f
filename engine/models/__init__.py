"""Shared model services: inference backends and the prompt formats of each model family."""
