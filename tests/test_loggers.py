"""W&B only when chosen: a job with ``logger=csv`` (or none) never imports ``wandb`` (its import and start-up
cost CPU-seconds per job, pitfalls.md), and W&B still imports and works where a W&B logger is chosen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TINY = [
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=32",
    "data.n_eval=2",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "cut=layer2",
    "utility_test=false",
]

# one job through the console entry point (task skeleton, results, finish_logger, WandbRuns), in a fresh
# interpreter; then which wandb modules it imported, and whether `import wandb` still works afterwards
PROBE = textwrap.dedent(
    """
    import json, sys
    from splitinv.run import main

    main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m == "wandb" or m.startswith("wandb."))
    try:
        import wandb
        importable = isinstance(wandb.__version__, str)
    except ImportError:
        importable = False
    print("PROBE " + json.dumps({"loaded": loaded, "importable_after": importable}))
    """
)


def _probe(tmp_path: Path, *overrides: str) -> dict:
    pytest.importorskip("wandb")  # without W&B installed there is nothing to keep out
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))


@pytest.mark.parametrize(
    "overrides",
    [
        ["logger=csv"],  # a torchvision victim, CSV logs
        ["~logger", "victim=resnet10t"],  # a timm victim (timm imports wandb when it can), no logger
    ],
)
def test_a_job_without_a_wandb_logger_never_imports_wandb(tmp_path: Path, overrides: list[str]) -> None:
    found = _probe(tmp_path, *overrides)
    assert found["loaded"] == []
    assert found["importable_after"]  # hidden only while timm imported: a W&B logger still gets it
