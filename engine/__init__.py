"""adapt-engine: domain-specific post-training of multimodal LLMs, following AdaMLLM."""

__version__ = "0.1.0"
