"""fxprune.training: TrainConfig checks, the generic loop, hooks, learning rates, fine-tuning."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.training import Hook, TrainConfig, evaluate, finetune, format_record, train_loop


def batches(n: int = 4, size: int = 16):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n * size, 6, generator=gen)
    y = (x[:, 0] > 0).long()
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(n)]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


@pytest.mark.parametrize("field,value", [
    ("lr", 0), ("lr", -1.0), ("finetune_lr", 0.0), ("epochs", -1), ("epochs", 1.5), ("momentum", -0.1),
    ("optimizer", "rmsprop"), ("schedule", "step"), ("max_steps_per_epoch", 0),
])
def test_bad_config_is_an_input_error(field, value):
    with pytest.raises(fxprune.InputError, match=field):
        TrainConfig(batches(), **{field: value})
    with pytest.raises(fxprune.InputError, match="loader"):
        TrainConfig(None)


def test_loop_trains_logs_and_respects_max_steps():
    model = mlp()
    lines = []
    config = TrainConfig(batches(), epochs=3, lr=0.1, optimizer="adam", eval_loader=batches(2),
                         max_steps_per_epoch=3, log=lines.append, progress=False)
    assert config.steps_per_epoch() == 3
    history = train_loop(model, config)
    assert [r["epoch"] for r in history] == [1, 2, 3] and all(r["steps"] == 3 for r in history)
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["acc"] > 0.8
    assert 0.0 <= history[-1]["eval_acc"] <= 1.0 and evaluate(model, batches(2)) == history[-1]["eval_acc"]
    assert len(lines) == 3 and lines[0].startswith("train 1/3: loss ")
    assert history[-1]["lr"] == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(8 / 9 * torch.pi)).item()))


def test_hooks_add_a_loss_run_after_each_step_and_extend_records():
    class Count(Hook):
        name = "penalty"

        def __init__(self):
            self.steps, self.infos = [], []

        def extra_loss(self, model):
            return 0.01 * sum(p.pow(2).sum() for p in model.parameters())

        def after_step(self, step, info):
            self.steps.append(step)
            self.infos.append(info)

        def end_epoch(self, record):
            record["seen"] = len(self.steps)

    hook = Count()
    history = train_loop(mlp(), TrainConfig(batches(), epochs=2, progress=False), hooks=[hook])
    assert hook.steps == list(range(8)) and hook.infos[0] == {"batch_size": 16, "loss": hook.infos[0]["loss"],
                                                             "total_steps": 8}
    assert history[0]["penalty"] > 0 and [r["seen"] for r in history] == [4, 8]


def test_fixed_lr_groups_keep_their_rate_and_callable_optimizers():
    model = mlp()
    seen = {}

    def make(groups, lr):
        seen["lr"] = lr
        seen["opt"] = torch.optim.SGD(groups, lr=lr)
        return seen["opt"]

    groups = [{"params": list(model[0].parameters())},
              {"params": list(model[2].parameters()), "lr": 0.003, "fixed_lr": True}]
    history = train_loop(model, TrainConfig(batches(), epochs=2, lr=0.2, optimizer=make, min_lr=0.02,
                                            progress=False), param_groups=groups)
    assert seen["lr"] == 0.2 and 0.02 <= history[-1]["lr"] < 0.2
    assert seen["opt"].param_groups[1]["lr"] == 0.003


def test_finetune_uses_finetune_lr_and_returns_eval_mode():
    model = mlp().train()
    config = TrainConfig(batches(), epochs=5, finetune_epochs=1, lr=0.5, finetune_lr=0.01, schedule="none",
                         progress=False)
    history = finetune(model, config)
    assert [r["phase"] for r in history] == ["finetune"] and history[0]["lr"] == 0.01 and not model.training
    assert finetune(model, config.replace(finetune_epochs=0)) == []


def test_non_classification_losses_log_no_accuracy():
    model = nn.Linear(6, 1)
    data = [(x, x[:, :1] * 2.0) for x, _ in batches(2)]
    history = train_loop(model, TrainConfig(data, loss_fn=F.mse_loss, progress=False))
    assert history[0]["acc"] is None and "acc" not in format_record(history[0])


def test_bad_batches_and_diverging_losses_are_clear_errors():
    with pytest.raises(fxprune.InputError, match="inputs, targets"):
        train_loop(mlp(), TrainConfig([torch.randn(4, 6)], progress=False))
    with pytest.raises(fxprune.InputError, match="no batches"):
        train_loop(mlp(), TrainConfig([], progress=False))
    with pytest.raises(fxprune.InputError, match="learning rate"):
        train_loop(mlp(), TrainConfig(batches(), lr=1e30, progress=False, epochs=3))
