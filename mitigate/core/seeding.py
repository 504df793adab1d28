"""Named random streams. One seed fixes everything; each consumer draws from its own stream, so
adding a draw in one place never shifts the numbers of another.

The offsets are the ones earlier releases spelled inline (`seed * 1000 + 500 + rank`); they are
kept so that results stay bit-identical, and live here, in one table, under a name.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from mitigate.core.fields import ConfigError

# name: (multiplier, offset); the generator's seed is seed * multiplier + offset + rank
STREAMS = {
    "pretrain": (1, 0),  # pretraining batch order
    "rollouts": (1000, 0),  # training rollouts (per process)
    "objective": (1000, 500),  # draws by objectives and regularizers: demonstrations, replay paths (per process)
    "reference": (1000, 700),  # base-model samples for reference sets (per process)
    "probe": (1000, 900),  # periodic pass@1 probe during training (main process)
    "eval": (1, 0),  # `mitigate eval --seed N` and the demonstration-bias probe
    "eval_trained": (1, 10_000),  # evaluation inside `reproduce`, seeded by the training seed
}


def torch_stream(seed: int, name: str, rank: int = 0) -> torch.Generator:
    """The torch generator of stream `name` for this seed and process rank."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream '{name}'; known: {', '.join(STREAMS)}")
    multiplier, offset = STREAMS[name]
    return torch.Generator().manual_seed(seed * multiplier + offset + rank)


def numpy_stream(seed: int, name: str) -> np.random.Generator:
    """A numpy generator for data-order decisions (`prompt_order`: [seed, 7])."""
    keys = {"prompt_order": 7}
    return np.random.default_rng([seed, keys[name]])


def seed_everything(seed: int) -> None:
    """Global RNGs (python, numpy, torch) for code that does not take a generator (model init)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_for(name: str) -> torch.device:
    """The torch device of config `device`; 'cuda' without a usable GPU is a `ConfigError` (never a
    silent fall-back to the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available (torch.cuda.is_available() is "
                          f"False; torch {torch.__version__}); allowed here: cpu, auto")
    return torch.device(name)
