"""Trained Keras model -> .keras bytes, checked by loading them back in safe mode."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np


def load_keras(path: Path) -> keras.Model:
    """Open a .keras file the way the service always does: safe mode, so no code runs."""
    return keras.models.load_model(path, safe_mode=True, compile=False)


def keras_bytes(model: keras.Model, example: np.ndarray) -> bytes:
    """A .keras file that `keras.models.load_model` opens without this project.

    The file is loaded back in safe mode and must reproduce the model's outputs
    on example, so a model that only loads with custom code never ships.
    """
    with tempfile.TemporaryDirectory(prefix="trainery-keras-") as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        expected = np.asarray(model(example, training=False))
        got = np.asarray(load_keras(path)(example, training=False))
        if not np.allclose(expected, got, rtol=1e-5, atol=1e-5):
            raise RuntimeError("the saved .keras model does not reproduce the trained model")
        return path.read_bytes()
