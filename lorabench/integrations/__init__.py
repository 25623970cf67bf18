"""lorabench adapters in other libraries' training loops.

:mod:`lorabench.integrations.hf_trainer`: ``transformers.Trainer`` (``LorabenchTrainer``,
``LorabenchCallback``, ``lorabench_trainer``). Imported on first use, so that importing this
package does not import ``transformers.Trainer``.
"""

from __future__ import annotations

from typing import Any

_HF_TRAINER = (
    "LorabenchCallback",
    "LorabenchTrainer",
    "lorabench_trainer",
    "save_adapter_and_head",
    "uses_training_hooks",
)

__all__ = list(_HF_TRAINER)


def __getattr__(name: str) -> Any:
    if name in _HF_TRAINER:
        from lorabench.integrations import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
