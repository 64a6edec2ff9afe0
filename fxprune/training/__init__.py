"""Training support shared by the training-time methods, fine-tuning and ``tools/``.

- ``loop``: ``TrainConfig``, ``Hook``, the one ``train_loop``, ``evaluate`` and ``finetune``;
- ``optim_state``: the optimizer state of a model carried across a rewrite (sliced like its weights);
- ``data``: Fashion-MNIST (IDX files), CIFAR-shaped data and the bundled 500-image subset.

The core's other modules never import this package except ``prepare`` (fine-tuning) and the
top-level ``TrainConfig``; ``data`` and ``optim_state`` load on first use
(``from fxprune.training import data``).
"""
from __future__ import annotations

from .loop import (OPTIMIZERS, SCHEDULES, Hook, TrainConfig, evaluate, finetune, format_record, make_optimizer,
                   pick_device, train_config_from, train_loop)

__all__ = ["OPTIMIZERS", "SCHEDULES", "Hook", "TrainConfig", "evaluate", "finetune", "format_record",
           "make_optimizer", "pick_device", "train_config_from", "train_loop"]
