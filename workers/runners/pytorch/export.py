"""Trained PyTorch model -> TorchScript and safetensors bytes."""

from __future__ import annotations

import io

import torch
from safetensors.torch import save as save_safetensors
from torch import nn


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """A TorchScript file that `torch.jit.load` opens without this project."""
    model = model.eval().cpu()
    try:
        scripted = torch.jit.script(model)
    except Exception:  # noqa: BLE001 - tracing covers what scripting cannot
        scripted = torch.jit.trace(model, example)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def safetensors_bytes(model: nn.Module) -> bytes:
    """The state_dict in safetensors format."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(state)
