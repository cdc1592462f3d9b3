"""The Keras runner (TensorFlow backend).

Importing this package fixes Keras's backend and quiets TensorFlow's C++ logging
before any submodule imports them; the runner process never imports torch.
"""

import os

# Keras 3 picks its backend at import time; a KERAS_BACKEND=torch inherited from
# the worker's environment would pull torch into this process.
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
