"""llm-alloy: fuse the knowledge of several heterogeneous LLMs into one target LLM."""

__version__ = "0.1.0"
