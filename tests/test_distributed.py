"""Launchers and DDP at cluster size: the SLURM launcher's counts resolve from the trainer (never -1), and a
2-process DDP job trains on both ranks but evaluates, scores, writes and prints once (rank zero)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
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
        argv = ["-m", "hydra/launcher=slurm", "trainer=ddp", override, "cut=layer1,layer2", "--cfg", "job"]
        check_launcher("run", argv)
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


# ------------------------------------------------------------------------------------------------ DDP

TINY = [
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=64",
    "data.n_eval=4",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "utility_test=false",
    "cut=layer2",
]

# splitinv-run with each call to the work rank zero alone must do noted in a file, one line per call with
# the process and its rank. Lightning's DDP launcher re-executes this script (sys.argv[0]) for rank 1.
WRAPPER = """
import os
from pathlib import Path

NOTES = Path(os.environ["SPLITINV_TEST_NOTES"])
RANK = os.environ.get("LOCAL_RANK", "0")  # Lightning sets it in the processes it starts


def note(what):
    with NOTES.open("a") as f:
        f.write(f"{what} pid={os.getpid()} rank={RANK}\\n")


def counted(owner, name, label=None):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        note(label(*args) if label else name)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


note("start")
from splitinv import metrics, results
from splitinv.evaluate import InversionModule
from splitinv.split import Split

counted(metrics, "score")
counted(Split, "utility")
counted(results, "write_run")
counted(InversionModule, "predict_step", lambda self, b, i: "attack " + ",".join(map(str, b[2].tolist())))
from splitinv.run import main

main()
"""


def _ddp_run(tmp_path: Path, *overrides: str) -> tuple[dict, list[str], list[dict]]:
    """A 2-process CPU DDP (gloo) splitinv-run: its record, its stdout lines, and the calls it noted."""
    script, notes, out = tmp_path / "splitinv_run.py", tmp_path / "notes.txt", tmp_path / "run"
    script.write_text(WRAPPER)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SPLITINV_TEST_NOTES": str(notes)}
    args = [*TINY, "trainer.devices=2", "trainer.strategy=ddp", *overrides, f"hydra.run.dir={out}"]
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = []
    for line in notes.read_text().splitlines():
        what, pid, rank = line.rsplit(" ", 2)
        calls.append({"what": what, "pid": pid, "rank": rank.removeprefix("rank=")})
    assert sorted(c["rank"] for c in calls if c["what"] == "start") == ["0", "1"]  # two processes ran
    assert len(list(tmp_path.rglob("metrics.json"))) == 1
    return json.loads((out / "metrics.json").read_text()), proc.stdout.splitlines(), calls


def _once_on_rank_zero(calls: list[dict], what: str) -> list[dict]:
    found = [c for c in calls if c["what"] == what]
    assert found and {c["rank"] for c in found} == {"0"}, f"{what} ran on {[c['rank'] for c in found]}"
    return found


@pytest.mark.slow
def test_ddp_trains_on_both_ranks_and_evaluates_writes_and_prints_once(tmp_path: Path) -> None:
    record, stdout, calls = _ddp_run(tmp_path)
    # 64 auxiliary images, batch 16, two ranks: each rank trains on 32 -> 2 steps (one process: 4)
    assert record["cost"]["train_steps"] == 2
    assert [line for line in stdout if line.startswith("decoder resnet18 @ layer2:")] == [stdout[-1]]
    scored = _once_on_rank_zero(calls, "score")  # evaluation and baselines: scored by one process
    assert len({c["pid"] for c in scored}) == 1
    assert len(_once_on_rank_zero(calls, "utility")) == 1
    assert len(_once_on_rank_zero(calls, "write_run")) == 1
    assert record["ssim"]["n"] == 4


@pytest.mark.slow
def test_ddp_per_image_attack_is_sharded_then_scored_once(tmp_path: Path) -> None:
    record, stdout, calls = _ddp_run(tmp_path, "attack=rmle", "attack.steps=3", "data.batch_size=2")
    attacked = {
        c["rank"]: c["what"].removeprefix("attack ").split(",") for c in calls if "attack " in c["what"]
    }
    assert set(attacked) == {"0", "1"}  # both ranks attacked their share of the images ...
    every = sorted(int(i) for indices in attacked.values() for i in indices)
    assert every == [0, 1, 2, 3]  # ... each image once
    assert [line for line in stdout if line.startswith("rmle resnet18 @ layer2:")] == [stdout[-1]]
    _once_on_rank_zero(calls, "score")
    assert len(_once_on_rank_zero(calls, "write_run")) == 1
    assert record["ssim"]["n"] == 4
    assert (record["cost"]["attacked_images"], record["cost"]["skipped_images"]) == (4, 0)
