"""Your own network as a victim: wrap_module from Python, victim=custom from the command line (end to end
through the console scripts), and the one-line error for each thing a network can lack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nets
import pytest
import torch

from splitinv import cut, cut_points, wrap_module
from splitinv.errors import SplitinvError
from splitinv.victims import CHECKPOINT_FORMAT, OWN_WEIGHTS, Victim, build_custom_victim

TESTS = Path(__file__).resolve().parent
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _wrap(module: torch.nn.Module, **kwargs) -> Victim:
    settings = {"name": "tiny", "mean": MEAN, "std": STD, "image_size": 16, "num_classes": 10, **kwargs}
    return wrap_module(module, **settings)


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------------ python


def test_wrap_module_normalises_then_runs_the_module() -> None:
    torch.manual_seed(0)
    module = nets.tiny_cnn()
    victim = _wrap(module)
    assert victim.model is module and not victim.training
    x = torch.rand(3, 3, 16, 16)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(victim(x), module((x - mean) / std))
    assert victim.describe() == {
        "name": "tiny",
        "family": "custom",
        "weights": OWN_WEIGHTS,
        "pretrained": True,
        "image_size": 16,
        "num_classes": 10,
        "mean": list(MEAN),
        "std": list(STD),
    }
    assert {"block1", "block2", "block3", "fc"} <= set(cut_points(victim))
    head, tail = cut(victim, "block2")
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), victim(x))


def test_wrap_module_loads_state_dicts_and_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = _wrap(nets.tiny_cnn())
    torch.save(trained.model.state_dict(), tmp_path / "state.pt")
    torch.save(trained.checkpoint(), tmp_path / "victim.pt")
    x = torch.rand(2, 3, 16, 16)
    for name in ("state.pt", "victim.pt"):
        loaded = _wrap(nets.tiny_cnn(), weights=tmp_path / name)
        assert loaded.weights == str(tmp_path / name)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), trained(x))
    assert torch.load(tmp_path / "victim.pt", weights_only=True)["format"] == CHECKPOINT_FORMAT

    with pytest.raises(SplitinvError, match=r"holds a tiny victim, not other: set victim.name=tiny") as info:
        _wrap(nets.tiny_cnn(), name="other", weights=tmp_path / "victim.pt")
    _one_line(info)
    with pytest.raises(
        SplitinvError, match=r"was trained with mean \[0.5, 0.4, 0.3\].*set mean and std"
    ) as info:
        _wrap(nets.tiny_cnn(), mean=(0.5,) * 3, weights=tmp_path / "victim.pt")
    _one_line(info)
    with pytest.raises(
        SplitinvError, match=r"do not fit tiny \(missing 0, unexpected 0, wrong shape 2"
    ) as info:
        _wrap(nets.tiny_cnn(num_classes=5), num_classes=5, weights=tmp_path / "state.pt")
    _one_line(info)


@pytest.mark.parametrize(
    ("module", "settings", "message"),
    [
        (nets.fixed_size_mlp(), {"image_size": 8}, r"^victim tiny: forward on a \(1, 3, 8, 8\) batch failed "
         r"\(RuntimeError: mat1 and mat2.*\): image_size and channels must match what the network takes\.$"),
        (nets.tiny_cnn(), {"channels": 1, "mean": [0.5], "std": [0.5]},
         r"forward on a \(1, 1, 16, 16\) batch failed \(RuntimeError: .*channels.*image_size and channels"),
        (nets.feature_extractor(), {}, r"^victim tiny returns shape \(1, 4, 16, 16\) for one image, not "
         r"\(1, 10\) logits: make forward return \(batch, num_classes\) class logits"),
        (nets.tiny_cnn(), {"num_classes": 7}, r"returns shape \(1, 10\) for one image, not \(1, 7\) logits.*"
         r"or set num_classes"),
        (nets.opaque(), {}, r"^victim tiny has no cut points: build it from named submodules"),
        (nets.tiny_cnn(), {"mean": [0.5]}, r"^mean has 1 value\(s\) but channels=3: give one value per"),
        (nets.tiny_cnn(), {"std": [1, 0, 1]}, r"^std must be positive"),
        (nets.tiny_cnn(), {"image_size": 0}, r"^image_size must be a positive integer, got 0"),
        (nets.not_a_module(), {}, r"^wrap_module takes an nn.Module, got a dict"),
    ],
    ids=["size", "channels", "features", "num_classes", "no-cut-points", "mean", "std", "image_size", "dict"],
)  # fmt: skip
def test_wrap_module_refuses_what_a_run_cannot_use(module, settings: dict, message: str) -> None:
    with pytest.raises(SplitinvError, match=message) as info:
        _wrap(module, **settings)
    _one_line(info)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (None, r"^victim=custom needs victim.factory=package.module:function"),
        ("nets.tiny_cnn", r"^victim.factory='nets.tiny_cnn' is not of the form 'package.module:function'"),
        ("no_such_module:f", r"^victim.factory=no_such_module:f: module 'no_such_module' does not import "
         r"\(is its folder on PYTHONPATH\?\): ModuleNotFoundError"),
        ("nets:tiny_cnnn", r"^victim.factory=nets:tiny_cnnn: nets has no attribute 'tiny_cnnn'. Did you mean "
         r"tiny_cnn\?"),
        ("nets:NOT_A_FUNCTION", r"^victim.factory=nets:NOT_A_FUNCTION is not a function \(it is a int\)"),
        ("nets:broken", r"^victim.factory=nets:broken raised RuntimeError: no GPU here$"),
        ("nets:not_a_module", r"^victim.factory=nets:not_a_module returned a dict, not an nn.Module"),
        ("nets:feature_extractor", r"^victim feature_extractor returns shape \(1, 4, 16, 16\) for one image"),
        ("nets:opaque", r"^victim opaque has no cut points"),
    ],
)  # fmt: skip
def test_custom_factory_errors(factory: str | None, message: str) -> None:
    with pytest.raises(SplitinvError, match=message) as info:
        build_custom_victim(factory, image_size=16)
    _one_line(info)


def test_custom_factory_gets_num_classes_and_kwargs() -> None:
    victim = build_custom_victim("nets:tiny_cnn", image_size=16, num_classes=4, kwargs={"width": 2})
    assert victim.name == "tiny_cnn" and victim.num_classes == 4 and victim.model.fc.out_features == 4
    assert victim.model.block1[0].out_channels == 2
    assert build_custom_victim("nets:tiny_cnn", name="mine", image_size=16).num_classes == 10  # its output
    gray = build_custom_victim("nets:tiny_cnn", channels=1, mean=[0.5], std=[0.5], kwargs={"channels": 1})
    assert gray(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/own-network.md's code (mynets.py, then the wrap_module call) is code that works."""
    section = (TESTS.parent / "docs" / "own-network.md").read_text()
    blocks = section.split("```python")[1:3]
    module_code, usage = (block[: block.index("```")] for block in blocks)
    (tmp_path / "mynets.py").write_text(module_code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import mynets

    victim = wrap_module(mynets.tiny_cnn(), name="tiny_cnn", mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225), image_size=32, num_classes=10)  # fmt: skip
    (tmp_path / "outputs").mkdir()
    torch.save(victim.checkpoint(), tmp_path / "outputs" / "tiny.pt")
    try:
        exec(compile(usage, "docs/own-network.md", "exec"), {})
    finally:
        sys.modules.pop("mynets", None)


# ------------------------------------------------------------------------------------------ command line


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)  # the console script itself
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "WANDB_MODE": "disabled",
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


TINY = [
    "victim=custom",
    "victim.factory=nets:tiny_cnn",
    "victim.name=tiny_cnn",
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=32",
    "data.n_eval=4",
    "data.batch_size=16",
    "logger=csv",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_train_then_attack_your_own_network_end_to_end(tmp_path: Path) -> None:
    """The README's commands: splitinv-train-victim victim=custom, then splitinv-run victim=custom on it."""
    checkpoint = tmp_path / "victim.pt"
    train = _script(
        "splitinv-train-victim", *TINY, f"checkpoint={checkpoint}", f"hydra.run.dir={tmp_path / 'train'}",
        "allow_chance=true", cwd=tmp_path,  # 32 images, one epoch: the mechanics, not a trained network
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["name"] == "tiny_cnn" and saved["family"] == "custom" and saved["num_classes"] == 10

    out = tmp_path / "run"
    run = _script(
        "splitinv-run", *TINY, f"victim.weights={checkpoint}", "cut=block2", "attack=decoder",
        "utility_test=false", f"hydra.run.dir={out}", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "ok" and record["victim"] == "tiny_cnn" and record["cut"] == "block2"
    assert record["weights"] == str(checkpoint) and record["ssim"]["n"] == 4


def test_command_line_error_is_one_line_before_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _script("splitinv-run", *TINY, "victim.factory=nets:feature_extractor", f"hydra.run.dir={out}",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("splitinv-run: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "victim tiny_cnn returns shape (1, 4, 32, 32) for one image, not (1, num_classes)" in errors[0]
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("decoder.pt"))
