"""lorabench: a benchmark suite for adaptive-rank LoRA variants under equal compute budgets."""

__version__ = "0.1.0"
