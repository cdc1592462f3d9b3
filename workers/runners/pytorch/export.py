"""Trained PyTorch model -> TorchScript, safetensors and ONNX bytes."""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from workers.runners.onnx_artifact import ONNX_INPUT, check_onnx


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> tuple[bytes, str]:
    """A TorchScript file that `torch.jit.load` opens without this project, and why scripting
    failed when it fell back to tracing ("" when scripting worked)."""
    model = model.eval().cpu()
    script_error = ""
    try:
        scripted = torch.jit.script(model)
    except Exception as exc:  # noqa: BLE001 - tracing covers what scripting cannot
        script_error = _short(exc)
        scripted = torch.jit.trace(model, example)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue(), script_error


def safetensors_bytes(model: nn.Module) -> bytes:
    """The state_dict in safetensors format."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(state)


ONNX_OPSET = 17


def preload_onnx() -> None:
    """Import the `onnx` package, which torch.onnx.export imports at its first call: a
    second of CPU (bench/start_latency.py) that a spare or a template pays once, before
    its jobs, instead of each job at its end. Not onnxruntime (check_onnx): its import
    starts a thread of its own, which a forked child would lack (and a lock it held would
    stay held there); importing it costs the job a few hundredths of a second. Without
    onnx installed, nothing: the export reports why it has no ONNX file."""
    with contextlib.suppress(ImportError):
        import onnx  # noqa: F401


def onnx_bytes(model: nn.Module, example: torch.Tensor, output_name: str) -> bytes:
    """A plain ONNX graph (input "inputs", dynamic batch axis), checked in onnxruntime if installed.

    The TorchScript-based exporter comes first: it gives an ordinary graph in a
    second. The torch.export-based one (dynamo) is the fallback for what it cannot do.
    """
    model = model.eval().cpu()
    try:
        payload = _export_torchscript_onnx(model, example, output_name)
    except Exception as first:  # noqa: BLE001 - the second exporter may manage
        try:
            payload = _export_dynamo_onnx(model, example, output_name)
        except Exception as second:  # noqa: BLE001 - report both causes
            raise RuntimeError(f"torch.onnx.export failed: {_short(first)}; the dynamo "
                               f"exporter failed too: {_short(second)}") from second
    check_onnx(payload, example.numpy(), model(example).detach().numpy())
    return payload


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _export_torchscript_onnx(model: nn.Module, example: torch.Tensor, output_name: str) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(model, (example,), buffer,  # type: ignore[arg-type]
                          dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[ONNX_INPUT], output_names=[output_name],
                          dynamic_axes={ONNX_INPUT: {0: "batch"}, output_name: {0: "batch"}})
    return buffer.getvalue()


def _export_dynamo_onnx(model: nn.Module, example: torch.Tensor, output_name: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[ONNX_INPUT], output_names=[output_name],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    assert program is not None
    return program.model_proto.SerializeToString()  # type: ignore[no-any-return]
