"""Training for training-time methods (``itpcc``, later ``bep``): a config and one generic loop.

Needs: a module and a ``TrainConfig`` (a loader of ``(inputs, targets)`` batches, a loss,
epochs, an optimizer ...). Guarantees: ``train_loop`` trains the module in place with a
tqdm bar per epoch, one learning-rate factor per step (cosine to ``min_lr`` or constant)
applied to every parameter group except those marked ``fixed_lr``, and returns one log
record per epoch (``epoch, phase, loss, acc, lr, steps, seconds`` plus ``eval_acc`` when an
``eval_loader`` is given, plus whatever the hooks add). ``Hook`` objects extend a step
(an extra loss term, work after the optimizer step) and the epoch record; the user's
other modules and the config are never modified.

    config = TrainConfig(loader, epochs=2, lr=0.05, finetune_epochs=1)
    history = train_loop(model, config)          # plain training
    finetune(pruned, config)                      # the fine-tuning phase (finetune_epochs)
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "none")


@dataclass
class TrainConfig:
    """How to train: data, loss, epochs (pruning phase and fine-tuning), optimizer, device.

    ``loader`` yields ``(inputs, targets)`` (``inputs`` a tensor or a tuple of tensors);
    ``loss_fn(outputs, targets)`` defaults to cross-entropy. ``optimizer`` is ``"sgd"``
    (Nesterov momentum when ``momentum > 0``), ``"adam"`` or a callable
    ``(param_groups, lr) -> torch.optim.Optimizer``. ``finetune_lr`` defaults to ``lr``.
    ``max_steps_per_epoch`` caps the batches of an epoch (quick runs). ``log`` receives
    one line per epoch (default: ``tqdm.write`` when ``progress``, else nothing).
    """

    loader: Iterable
    loss_fn: Callable | None = None
    epochs: int = 1
    finetune_epochs: int = 0
    optimizer: str | Callable = "sgd"
    lr: float = 0.01
    finetune_lr: float | None = None
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    device: str | torch.device | None = None
    progress: bool = True
    eval_loader: Iterable | None = None
    max_steps_per_epoch: int | None = None
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.loader is None:
            raise InputError("TrainConfig needs loader=<iterable of (inputs, targets) batches>")
        for name in ("epochs", "finetune_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "finetune_lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise InputError(f"TrainConfig.{name} must be a positive number, got {value!r}")
        for name in ("min_lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"TrainConfig.{name} must be a number >= 0, got {value!r}")
        if isinstance(self.optimizer, str) and self.optimizer not in OPTIMIZERS:
            raise InputError(f"TrainConfig.optimizer must be one of {OPTIMIZERS} or a callable, got {self.optimizer!r}")
        if not isinstance(self.optimizer, str) and not callable(self.optimizer):
            raise InputError(f"TrainConfig.optimizer must be one of {OPTIMIZERS} or a callable, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.max_steps_per_epoch is not None and (not isinstance(self.max_steps_per_epoch, int)
                                                     or self.max_steps_per_epoch < 1):
            raise InputError(f"TrainConfig.max_steps_per_epoch must be a positive integer, got {self.max_steps_per_epoch!r}")

    @classmethod
    def fields(cls) -> set[str]:
        """The option names (for building a config from ``key=value`` options)."""
        return {f.name for f in dataclasses.fields(cls)}

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def steps_per_epoch(self) -> int | None:
        """Batches per epoch (``len(loader)`` capped by ``max_steps_per_epoch``), None if unknown."""
        try:
            n = len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return self.max_steps_per_epoch
        return min(n, self.max_steps_per_epoch) if self.max_steps_per_epoch else n


def train_config_from(method: str, train: Any, data: Any, loss_fn: Any, progress: bool) -> "TrainConfig":
    """A method's ``train`` option as a TrainConfig (a dict is completed with ``data``, ``loss_fn``, ``progress``)."""
    if isinstance(train, TrainConfig):
        return train
    fields = dict(train or {})
    if data is None and "loader" not in fields:
        raise InputError(f"method {method!r} trains: pass train=fxprune.TrainConfig(loader, ...) or "
                         "data=<iterable of (inputs, targets) batches>")
    unknown = sorted(set(fields) - TrainConfig.fields())
    if unknown:
        raise InputError(f"train has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(TrainConfig.fields()))}")
    fields.setdefault("loader", data)
    fields.setdefault("loss_fn", loss_fn)
    fields.setdefault("progress", progress)
    return TrainConfig(**fields)


class Hook:
    """Extension points of ``train_loop`` (override what you need).

    ``extra_loss(model)``: a term added to the task loss of every step (None: nothing);
    its mean per epoch is logged under ``name``. ``after_step(step, info)`` runs after the
    optimizer step, before gradients are cleared (``step`` counts from 0 over the whole
    loop; ``info`` has ``batch_size``, ``loss`` (the task loss) and ``total_steps``, 0 when
    unknown). ``postfix()`` adds to the tqdm bar; ``end_epoch(record)`` adds fields to the
    epoch record.
    """

    name: str = "extra"

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_step(self, step: int, info: dict[str, Any]) -> None:
        pass

    def postfix(self) -> dict[str, str]:
        return {}

    def end_epoch(self, record: dict[str, Any]) -> None:
        pass


def pick_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """None: the model's device; ``"auto"``: CUDA when available; else as given."""
    if device is None:
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_optimizer(config: TrainConfig, param_groups: Sequence[dict], lr: float) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``param_groups`` (groups may set their own lr)."""
    groups = [dict(g) for g in param_groups]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise InputError("nothing to train: no parameter requires gradients")
    if callable(config.optimizer):
        return config.optimizer(groups, lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               nesterov=config.momentum > 0)
    return torch.optim.Adam(groups, lr=lr, weight_decay=config.weight_decay)


def _split(batch: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        return ((x,) if isinstance(x, torch.Tensor) else tuple(x)), y
    raise InputError("training needs batches of (inputs, targets); got " + type(batch).__name__)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def _correct(out: Any, y: Any) -> int | None:
    """Top-1 hits when ``out`` are class scores for integer targets ``y``, else None."""
    if isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor) and out.dim() == 2 \
            and y.dim() == 1 and not y.is_floating_point() and out.shape[0] == y.shape[0]:
        return int((out.detach().argmax(1) == y).sum())
    return None


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy in [0, 1] on ``(inputs, targets)`` batches, in eval mode (mode restored)."""
    dev = pick_device(device, model)
    was_training = model.training
    model.eval()
    hits = total = 0
    try:
        for batch in loader:
            x, y = _split(batch)
            out = model(*_to(x, dev))
            hit = _correct(out, y.to(dev))
            if hit is None:
                raise InputError("evaluate needs class scores (N x classes) and integer targets")
            hits, total = hits + hit, total + y.shape[0]
    finally:
        model.train(was_training)
    if not total:
        raise InputError("evaluate: the loader yielded no samples")
    return hits / total


def _factor(config: TrainConfig, base_lr: float, step: int, total: int) -> float:
    if config.schedule == "none" or total <= 1:
        return 1.0
    floor = min(config.min_lr / base_lr, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def train_loop(model: nn.Module, config: TrainConfig, *, epochs: int | None = None, lr: float | None = None,
               param_groups: Sequence[dict] | None = None, hooks: Sequence[Hook] = (),
               phase: str = "train") -> list[dict[str, Any]]:
    """Train ``model`` in place (see module doc); returns one record per epoch.

    ``epochs``/``lr`` default to the config's; ``param_groups`` (torch optimizer groups,
    a group with ``"fixed_lr": True`` keeps its lr) default to all parameters.
    """
    epochs = config.epochs if epochs is None else epochs
    lr = config.lr if lr is None else lr
    dev = pick_device(config.device, model)
    model.to(dev)
    groups = list(param_groups) if param_groups is not None else [{"params": list(model.parameters())}]
    opt = make_optimizer(config, groups, lr)
    base = [g["lr"] for g in opt.param_groups]
    loss_fn = config.loss_fn or F.cross_entropy
    per_epoch = config.steps_per_epoch()
    total = epochs * per_epoch if per_epoch else 0
    log = config.log if config.log is not None else (tqdm.write if config.progress else None)
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        sums = {"loss": 0.0, **{h.name: 0.0 for h in hooks}}
        hits = seen = steps = 0
        scored = True  # whether outputs are class scores (accuracy is logged)
        bar = tqdm(config.loader, total=per_epoch, desc=f"{phase} {epoch}/{epochs}", leave=False,
                   disable=not config.progress, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
        for batch in bar:
            if config.max_steps_per_epoch is not None and steps >= config.max_steps_per_epoch:
                break
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b if g.get("fixed_lr") else b * _factor(config, lr, step, total)
            x, y = _split(batch)
            x, y = _to(x, dev), _to(y, dev)
            out = model(*x)
            task = loss_fn(out, y)
            loss = task
            for h in hooks:
                extra = h.extra_loss(model)
                if extra is not None:
                    loss = loss + extra
                    sums[h.name] += float(extra.detach())
            if not torch.isfinite(loss):
                raise InputError(f"{phase}: the loss became {float(loss.detach())} at epoch {epoch}, step {steps}; "
                                 f"lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = y.shape[0] if isinstance(y, torch.Tensor) and y.dim() else 1
            info = {"batch_size": n, "loss": float(task.detach()), "total_steps": total}
            for h in hooks:
                h.after_step(step, info)
            sums["loss"] += float(task.detach()) * n
            hit = _correct(out, y)
            scored = scored and hit is not None
            hits += hit or 0
            seen, steps, step = seen + n, steps + 1, step + 1
            postfix = {"loss": f"{sums['loss'] / seen:.4f}"}
            for h in hooks:
                postfix.update(h.postfix())
            bar.set_postfix(postfix, refresh=False)
        bar.close()
        if not steps:
            raise InputError(f"{phase}: the loader yielded no batches")
        rec: dict[str, Any] = {"epoch": epoch, "phase": phase, "loss": sums["loss"] / seen,
                               "acc": hits / seen if scored else None}
        for h in hooks:
            rec[h.name] = sums[h.name] / steps
        rec["lr"] = opt.param_groups[0]["lr"]
        rec["steps"] = steps
        if config.eval_loader is not None:
            rec["eval_acc"] = evaluate(model, config.eval_loader, dev)
        for h in hooks:
            h.end_epoch(rec)
        rec["seconds"] = time.perf_counter() - t0
        history.append(rec)
        if log is not None:
            log(format_record(rec, epochs))
    return history


def format_record(rec: dict[str, Any], epochs: int | None = None) -> str:
    """One log line: ``train 2/5: loss 0.4123 acc 0.8610 reg 1.2e-02 ... (12.3s)``."""
    head = f"{rec.get('phase', 'train')} {rec['epoch']}" + (f"/{epochs}" if epochs else "")
    parts = []
    for k, v in rec.items():
        if k in ("epoch", "phase", "seconds") or v is None:
            continue
        if isinstance(v, float):
            parts.append(f"{k} {v:.4f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{k} {v:.3g}")
        elif isinstance(v, (int, str)):
            parts.append(f"{k} {v}")
    return f"{head}: " + " ".join(parts) + f" ({rec.get('seconds', 0.0):.1f}s)"


def finetune(model: nn.Module, config: TrainConfig, *, epochs: int | None = None,
             hooks: Sequence[Hook] = ()) -> list[dict[str, Any]]:
    """The fine-tuning phase: ``config.finetune_epochs`` at ``finetune_lr`` (default ``lr``).

    Trains every parameter that requires gradients (freeze what must not move first);
    returns the epoch records (phase ``"finetune"``); the model is left in eval mode.
    """
    epochs = config.finetune_epochs if epochs is None else epochs
    history = train_loop(model, config, epochs=epochs, lr=config.finetune_lr or config.lr, hooks=hooks,
                         phase="finetune") if epochs else []
    model.eval()
    return history
