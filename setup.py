"""clip_jax: CLIP in JAX/Flax, numerically identical to OpenAI CLIP / open_clip, sharded over device meshes."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-cpu>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    # tensorflow-datasets imports it to prepare any of its datasets but declares it only for Python < 3.9.
    "importlib_resources>=6",
    "ml-collections>=1.1,<2",
    "safetensors>=0.5",
    "ftfy>=6.1",
    "regex>=2024.1",
    "pillow>=10",
    "numpy>=1.26",
    "tqdm>=4.66",
    "tensorboardX>=2.6",  # writes the event files (config.report_to "tensorboard")
    "tensorboard>=2.21,<2.22",  # reads them: `tensorboard --logdir WORKDIR`, as the README says
    "matplotlib>=3.8",
    "absl-py>=2.1",
    "submitit>=1.5.4,<2",  # clip_jax.sweep: local and Slurm executors
    "sentencepiece>=0.2",  # SigLIP's tokenizer (its checkpoints ship a spiece.model)
    # tensorflow-text (sentencepiece inside tf.data, clip_jax/data/tokenize_ops.py) is not listed: it declares
    # `tensorflow`, whose CUDA build would overwrite tensorflow-cpu's files. scripts/venv.sh installs it
    # with --no-deps; without it the pipeline tokenizes sentencepiece in Python (the same ids, slower).
    "braceexpand>=0.1.7",  # webdataset shard lists ("{00000..00099}.tar"), expanded as open_clip does
]

# Weights & Biases for config.report_to=("wandb",): `pip install -e '.[wandb]'`.
WANDB = ["wandb>=0.31,<0.32"]

TEST = [
    *WANDB,  # tested offline (WANDB_MODE=offline)
    "pytest>=8",
    "pytest-xdist>=3.8",
    "ruff>=0.15",
    "scikit-learn>=1.5",
    "scikit-image>=0.24",
    # PyTorch references for parity tests and benchmarks only; the package never imports torch to load
    # .safetensors weights. torch 2.14.1 / torchvision 0.29.1 are the pair that installs offline here.
    "torch==2.14.1",
    "torchvision==0.29.1",
    "open_clip_torch>=3.0",
    "transformers>=4.45",
    # diffusers' Stable Diffusion pipelines: the client clip_jax's exported text encoders are tested against.
    "diffusers>=0.42",
    # open_clip's webdataset loader, the input-pipeline benchmark's reference (open_clip_train.data imports
    # pandas at module level; its reader breaks on webdataset 1.x's end-of-shard markers, and open_clip's
    # training extra pins <=0.2.86).
    "webdataset==0.2.86",
    "pandas>=2",
]

setup(
    name="clip_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["clip_jax", "clip_jax.*"]),
    package_data={"clip_jax": ["assets/*", "eval/metadata/*.json", "eval/metadata/*.md"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"test": TEST, "wandb": WANDB},
)
