"""Shared test set-up.

torchvision 0.29 segfaults when it is imported after tensorflow 2.21, and pytest imports every test
module (some import tensorflow) before running any test, so torchvision is loaded first here.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import torchvision  # noqa: F401
except ImportError:
    pass
