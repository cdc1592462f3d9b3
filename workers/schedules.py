"""Learning-rate schedules, per epoch, shared by both frameworks so their lr series agree."""

from __future__ import annotations

import math

from app.core.spec import ScheduleSpec


def lr_at(schedule: ScheduleSpec, base_lr: float, epoch: int, epochs: int) -> float:
    """The learning rate for zero-based epoch of epochs."""
    if schedule.warmup_epochs and epoch < schedule.warmup_epochs:
        return base_lr * (epoch + 1) / (schedule.warmup_epochs + 1)
    if schedule.name == "constant":
        return base_lr
    if schedule.name == "step":
        return base_lr * schedule.gamma ** (epoch // schedule.step_size)
    span = max(1, epochs - schedule.warmup_epochs)
    progress = (epoch - schedule.warmup_epochs) / span
    return schedule.min_lr + (base_lr - schedule.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
