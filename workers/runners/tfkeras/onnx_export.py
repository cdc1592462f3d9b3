"""Trained Keras model -> ONNX bytes with tf2onnx (the converter Keras 3 itself uses on TensorFlow).

Keras 3's `model.export(path, format="onnx")` hands tf2onnx every input of the
traced function, and the constants a Normalization layer captures (its mean and
variance) are inputs of that function: the exported graph then asks its callers
for them ("Required inputs ... normalize/Sub/y:0 ... are missing from input
feed"). So we trace the model ourselves and name only the real input; the
captured constants are frozen into the graph like the weights. And tf2onnx 1.17
emits TensorFlow's Erfc (Keras 3's exact gelu) as an ONNX op that does not exist
("No Op registered for Erfc"); we give it 1 - Erf(x) instead.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from workers.runners.onnx_artifact import ONNX_INPUT, check_onnx


def _erfc(ctx: Any, node: Any, name: str, _args: list[Any]) -> None:
    """tf2onnx handler for Erfc, which ONNX lacks: 1 - Erf(x)."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def preload_onnx() -> None:
    """Import the converter and the checker every job's ONNX export imports (tf2onnx,
    onnxruntime): a Keras spare pays it before its job, not the job at its end. Without
    them installed, nothing: the export reports why it has no ONNX file."""
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
        from tf2onnx import tf_loader  # noqa: F401


def onnx_bytes(model: keras.Model, example: np.ndarray, output_name: str) -> bytes:
    """A plain ONNX graph taking inputs as the dataset holds them (dynamic batch axis)."""
    try:
        import tf2onnx
        from tf2onnx import tf_loader
    except ImportError as exc:
        raise RuntimeError("the tf2onnx converter is not installed on this worker "
                           "(pip install 'trainery[keras]')") from exc
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    signature = [tf.TensorSpec((None, *example.shape[1:]), tf.as_dtype(example.dtype),
                               name=ONNX_INPUT)]

    forward = tf.function(lambda inputs: model(tf.cast(inputs, tf.float32), training=False),
                          input_signature=signature)
    concrete = forward.get_concrete_function()
    inputs = [t.name for t in concrete.inputs[:len(signature)]]
    outputs = [t.name for t in concrete.outputs]
    frozen = tf_loader.from_function(concrete, inputs, outputs)
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen, input_names=inputs, output_names=outputs,
        custom_op_handlers={"Erfc": (_erfc, [])},
        tensors_to_rename={inputs[0]: ONNX_INPUT, outputs[0]: output_name})
    payload: bytes = proto.SerializeToString()
    check_onnx(payload, example, np.asarray(model(example.astype(np.float32), training=False)))
    return payload
