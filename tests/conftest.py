"""Shared test set-up.

torchvision 0.29 and triton 3.8 (which diffusers and torch._dynamo import) segfault when they are imported
after tensorflow 2.21, and pytest imports every test module (some import tensorflow) before running any
test, so they are loaded first here.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

for _module in ("torchvision", "triton"):
    try:
        __import__(_module)
    except ImportError:
        pass
