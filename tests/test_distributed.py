"""Launchers and DDP at cluster size: the SLURM launcher's counts resolve from the trainer (never -1), and a
2-process DDP job trains on both ranks but evaluates, scores, writes and prints once (rank zero)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from splitinv.config import compose, slurm_count
from splitinv.errors import SplitinvError
from splitinv.task import check_launcher

ROOT = Path(__file__).resolve().parents[1]


def _launcher(*overrides: str) -> dict:
    cfg = compose(["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    return {**launcher, "devices": cfg.trainer.devices, "num_nodes": cfg.trainer.num_nodes}


# ---------------------------------------------------------------------------------------------- SLURM


def test_slurm_with_trainer_ddp_asks_for_as_many_gpus_and_tasks_as_devices() -> None:
    found = _launcher("trainer=ddp")
    assert found["devices"] > 0  # a number of GPUs per node, not Lightning's -1 ("all of them")
    assert found["gpus_per_node"] == found["tasks_per_node"] == found["devices"]
    assert found["nodes"] == found["num_nodes"] == 1


def test_slurm_counts_follow_devices_and_nodes() -> None:
    found = _launcher("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    assert (found["gpus_per_node"], found["tasks_per_node"], found["nodes"]) == (4, 4, 2)
    listed = _launcher("trainer=ddp", "trainer.devices=[0,1,2]")  # GPU ids: their count
    assert (listed["gpus_per_node"], listed["tasks_per_node"]) == (3, 3)
    cpu = _launcher("trainer.accelerator=cpu", "trainer.devices=2")  # CPU processes ask for no GPU
    assert (cpu["gpus_per_node"], cpu["tasks_per_node"], cpu["nodes"]) == (0, 2, 1)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.devices=-1", "trainer.devices"),
        ("trainer.devices=auto", "trainer.devices"),
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.num_nodes=0", "trainer.num_nodes"),
    ],
)
def test_slurm_refuses_counts_it_cannot_take_in_one_line(override: str, key: str) -> None:
    with pytest.raises(SplitinvError) as err:  # what the command line gets, before Hydra's launcher runs
        check_launcher("run", ["-m", "hydra/launcher=slurm", "trainer=ddp", override, "cut=layer1,layer2"])
    message = str(err.value)
    assert "\n" not in message and f"{key} is" in message and f"set {key}=N" in message


def test_slurm_count_reads_lightning_device_forms() -> None:
    assert slurm_count(2, "trainer.devices") == 2
    assert slurm_count("3", "trainer.devices") == 3
    assert slurm_count("0,1", "trainer.devices") == 2
    assert slurm_count([0, 1, 2, 3], "trainer.devices", "gpu") == 4
    assert slurm_count(4, "trainer.devices", "cpu") == 0
    with pytest.raises(SplitinvError, match="trainer.devices is True"):
        slurm_count(True, "trainer.devices")


def test_the_documented_cluster_commands_resolve_positive_counts() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = re.sub(r"\\\n\s*", " ", "\n".join(p.read_text() for p in pages))
    lines = text.splitlines()
    commands = [line for line in lines if "splitinv-run" in line and "hydra/launcher=slurm" in line]
    commands = [line for line in commands if "`" not in line[: line.index("splitinv-run")]]  # blocks only
    assert commands, "the docs show no hydra/launcher=slurm command (docs/cluster.md did)"
    for line in commands:
        args = shlex.split(line[line.index("splitinv-run") :])[1:]
        check_launcher("run", args)  # the counts resolve, as the command does before launching
        single = [a for a in args if not a.startswith("-") and "," not in a]
        found = _launcher(*single)
        assert found["gpus_per_node"] == found["tasks_per_node"] == found["devices"] > 0
        assert found["nodes"] == found["num_nodes"] > 0
