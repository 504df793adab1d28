"""Shared fixtures: the smoke config, and one smoke base model pretrained once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mitigate import config as C  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine (or with the
# two-process distributed test) oversubscribed OpenMP threads make them ~10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_cfg() -> C.Config:
    return C.load(preset="smoke")


@pytest.fixture(scope="session")
def smoke_task(smoke_cfg):
    from mitigate.tasks import make_task

    return make_task(smoke_cfg.task)


@pytest.fixture(scope="session")
def smoke_base(tmp_path_factory, smoke_cfg):
    """Run folder of the smoke base model (pretrained once; treat as read-only)."""
    from mitigate.recipes.pretrain import pretrain

    out = tmp_path_factory.mktemp("smoke") / "base"
    pretrain(smoke_cfg, out, quiet=True)
    return out


@pytest.fixture(scope="session")
def smoke_model(smoke_base):
    """The smoke base model (the policy's GPT-2 module) in eval mode (shared: do not train it in place)."""
    from mitigate.policies import load_policy

    policy, _ = load_policy(smoke_base)
    return policy.model
