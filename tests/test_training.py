"""Training loops without a host sync per step, NaN checks every N steps, the precision setting, the trainer
factory (channels_last, torch.compile)."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from splitinv import training
from splitinv.attacks import AttackContext
from splitinv.attacks.dci import DCIModule, InverterChain, build_blocks
from splitinv.attacks.decoder import DecoderAttack
from splitinv.config import compose, instantiate
from splitinv.cut import cut
from splitinv.defenses.train import DefenseModule
from splitinv.errors import SplitinvError
from splitinv.gans.dcgan import DCGANDiscriminator, DCGANGenerator
from splitinv.gans.train import GANModule
from splitinv.split import split
from splitinv.train_victim import ClassifierModule
from splitinv.training import CHECK_EVERY, LossMonitor, build_trainer, resolve_precision
from splitinv.victims import build_victim

SYNC_METHODS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
}
syncs: collections.Counter[str] = collections.Counter()


class OnDevice(torch.Tensor):
    """A tensor standing for one on a GPU: every value computed from it is one too (torch_function keeps the
    subclass), and every read of it on the host (item, bool, float, tolist, cpu, numpy: what blocks a GPU's
    stream until the value is ready) is counted. Tensors born on the host (Adam's step counter, values the
    code copied out on purpose) are plain tensors and not counted."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in SYNC_METHODS:
            syncs[func.__name__] += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class Images(Dataset):
    """(image, label) items "on the device"; ``nan_at``: items whose image is NaN."""

    def __init__(self, n: int, size: int = 32, nan_at: tuple[int, ...] = ()) -> None:
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
        self.x[list(nan_at)] = float("nan")
        self.y = torch.arange(n) % 10

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i].as_subclass(OnDevice), self.y[i]


class _Data:
    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def setup(self, stage: str) -> None:
        pass

    def train_dataloader(self) -> DataLoader:
        return self.loader


def _victim() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_victim("resnet18", image_size=32, num_classes=10)


def _trainer(tmp_path: Path, steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=-1,
        logger=CSVLogger(tmp_path / "logs"),
        log_every_n_steps=1,  # Lightning reads logged values at every step: they must already be on the host
        enable_progress_bar=True,  # the progress bar reads its values at every step too
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def _fit_decoder(trainer: L.Trainer, loader: DataLoader) -> None:
    head, _ = cut(_victim(), "layer1")
    DecoderAttack().fit(AttackContext.for_head(head, (3, 32, 32), data=_Data(loader), trainer=trainer))


def _fit_module(make: Callable[[], L.LightningModule]) -> Callable[[L.Trainer, DataLoader], None]:
    def fit(trainer: L.Trainer, loader: DataLoader) -> None:
        trainer.fit(make(), train_dataloaders=loader)

    return fit


def _dci() -> L.LightningModule:
    head, _ = cut(_victim(), "layer1")
    blocks = build_blocks(head, ["body.maxpool"])
    return DCIModule(blocks, InverterChain([(3, 32, 32), (64, 8, 8), (64, 8, 8)], 16), finetune_from=1)


def _dci_images(trainer: L.Trainer, loader: DataLoader) -> None:
    images = DataLoader(
        [(x,) for x, _y in loader.dataset], batch_size=loader.batch_size, shuffle=False
    )  # DCI trains on images alone
    trainer.fit(_dci(), train_dataloaders=images)


LOOPS = {
    "decoder": _fit_decoder,
    "dci": _dci_images,
    "victim": _fit_module(lambda: ClassifierModule(_victim())),
    "defense": _fit_module(lambda: DefenseModule(split(_victim(), "layer1"))),
    "gan": _fit_module(lambda: GANModule(DCGANGenerator(nz=8, ngf=8), DCGANDiscriminator(ndf=8))),
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_training_loops_read_the_device_only_every_check_interval(loop: str, tmp_path: Path) -> None:
    """120 steps (batches of 2, 100 a epoch): the loop may read values computed on the device at its
    checks only (step 1, every CHECK_EVERY steps, the ends of epochs and of training), not at every step;
    a loop that checks its loss with ``if not torch.isfinite(loss)`` or logs device tensors to the progress
    bar reads them 120 times or more."""
    steps = 120
    loader = DataLoader(Images(200), batch_size=2, shuffle=False)
    syncs.clear()
    LOOPS[loop](_trainer(tmp_path, steps), loader)
    checks = 1 + steps // CHECK_EVERY + 2  # first step, every 50th, end of epoch 1, last step
    if loop == "dci":  # its epoch means (5 terms block-wise, 3 end to end) are read at each epoch's end
        checks += 5 + 3
    assert 1 <= sum(syncs.values()) <= checks, dict(syncs)


def test_a_nan_is_still_caught_and_named_by_the_step_it_appeared_at(tmp_path: Path) -> None:
    loader = DataLoader(Images(400, nan_at=(140,)), batch_size=2, shuffle=False)  # batch 70 is NaN
    trainer = _trainer(tmp_path, 200)
    with pytest.raises(SplitinvError) as err:
        _fit_decoder(trainer, loader)
    message = str(err.value)
    assert message.startswith("decoder loss became nan at step 70: lower attack.lr"), message
    assert "\n" not in message
    assert trainer.global_step <= 2 * CHECK_EVERY  # caught at the next check, not at the end


def test_loss_monitor_checks_every_n_steps_and_reports_the_first_bad_one() -> None:
    watch = LossMonitor("test loss", "lower lr.", every=5)
    returned = []
    for step in range(9):
        value = torch.tensor(float("inf") if step == 6 else 1.0 + step)
        returned.append(watch.update({"loss": value, "other": torch.tensor(2.0)}))
    assert watch.syncs == 2  # step 1 and step 5
    assert returned[0] == {"loss": 1.0, "other": 2.0} and returned[4] == {"loss": 5.0, "other": 2.0}
    assert all(r is None for i, r in enumerate(returned) if i not in (0, 4))  # the NaN not read yet
    with pytest.raises(SplitinvError, match=r"^test loss became inf at step 6: lower lr\. Terms at"):
        watch.update({"loss": torch.tensor(3.0), "other": torch.tensor(2.0)})  # the 10th: a check
    with pytest.raises(SplitinvError, match="at least 1 step"):
        LossMonitor("x", "y", every=0)


def test_dci_synthesis_still_names_the_iteration() -> None:
    from splitinv.attacks.dci import synthesize

    class NaNHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3).eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x * (float("nan") if x.shape[0] else 1.0))

    with pytest.raises(SplitinvError, match=r"synthesis loss became nan at iteration 0: lower"):
        synthesize(NaNHead(), 2, (3, 32, 32), iterations=3)


# ------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    ("accelerator", "cuda", "amx", "expected"),
    [
        ("cpu", False, False, "32-true"),
        ("cpu", False, True, "bf16-mixed"),
        ("auto", False, True, "bf16-mixed"),
        ("auto", False, False, "32-true"),
        ("gpu", True, False, "bf16-mixed"),
        ("cuda", True, False, "bf16-mixed"),
        ("auto", True, False, "bf16-mixed"),
        ("cpu", True, False, "32-true"),  # a CUDA machine asked to train on its CPU
        ("mps", False, True, "32-true"),
    ],
)
def test_auto_precision_is_bf16_where_the_hardware_has_it(
    monkeypatch: pytest.MonkeyPatch, accelerator: str, cuda: bool, amx: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(training, "cuda_has_bf16", lambda: cuda)
    monkeypatch.setattr(training, "cpu_has_amx", lambda: amx)
    assert resolve_precision("auto", accelerator) == expected
    assert resolve_precision(None, accelerator) == expected
    for explicit in ("32-true", "bf16-mixed", "16-mixed", 32):
        assert resolve_precision(explicit, accelerator) == explicit  # one switch away: what is asked


def test_an_old_gpu_without_bf16_trains_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(training, "cuda_has_bf16", lambda: False)
    assert resolve_precision("auto", "gpu") == "32-true"


def test_the_trainer_config_resolves_auto_and_keeps_fp32_one_switch_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = compose(["trainer.accelerator=cpu"], output_dir="out")
    assert cfg.trainer.precision == "auto"
    monkeypatch.setattr(training, "cpu_has_amx", lambda: True)
    assert instantiate(cfg.trainer, logger=False).precision == "bf16-mixed"
    monkeypatch.setattr(training, "cpu_has_amx", lambda: False)
    assert instantiate(cfg.trainer, logger=False).precision == "32-true"
    monkeypatch.setattr(training, "cpu_has_amx", lambda: True)
    fp32 = compose(["trainer.accelerator=cpu", "trainer.precision=32-true"], output_dir="out")
    assert instantiate(fp32.trainer, logger=False).precision == "32-true"


def _precision_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "without native bf16" in str(w.message)]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_explicit_bf16_on_a_cpu_without_native_bf16_warns_once(
    monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    cfg = compose(["trainer.accelerator=cpu", f"trainer.precision={precision}"], output_dir="out")
    monkeypatch.setattr(training, "cpu_has_amx", lambda: False)  # what `auto` reads
    monkeypatch.setattr(training, "cpu_has_avx512_bf16", lambda: False)  # an AVX2-only CPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert instantiate(cfg.trainer, logger=False).precision == precision  # still what was asked
    [message] = _precision_warnings(caught)
    assert f"trainer.precision={precision}" in message and "about 14x slower" in message
    assert "trainer.precision=auto" in message and "32-true" in message and "\n" not in message
    monkeypatch.setattr(training, "cpu_has_avx512_bf16", lambda: True)  # bf16 dot products, no AMX
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        instantiate(cfg.trainer, logger=False)
    [message] = _precision_warnings(caught)
    assert "1.5x slower" in message and "14x" not in message and "trainer.precision=auto" in message
    monkeypatch.setattr(training, "cpu_has_amx", lambda: True)  # an AMX CPU: bf16 is native, no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        instantiate(cfg.trainer, logger=False)
    assert _precision_warnings(caught) == []


def test_no_precision_warning_where_bf16_is_not_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for overrides in (["trainer.precision=32-true"], []):  # fp32 asked, and auto (which picks fp32 here)
            cfg = compose(["trainer.accelerator=cpu", *overrides], output_dir="out")
            assert instantiate(cfg.trainer, logger=False).precision == "32-true"
        training.warn_slow_precision("bf16-mixed", "gpu")  # a GPU: Lightning's own checks apply
        training.warn_slow_precision("16-mixed", "cpu")
    assert _precision_warnings(caught) == []
    with warnings.catch_warnings(record=True) as caught:  # accelerator=auto without CUDA runs on the CPU
        warnings.simplefilter("always")
        training.warn_slow_precision("bf16-mixed", "auto")
    assert len(_precision_warnings(caught)) == 1


def test_channels_last_and_compile_are_applied_while_fitting_and_undone(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Conv2d(3, 4, 3)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen["channels_last"] = self.net.weight.is_contiguous(memory_format=torch.channels_last)
            seen["compiled"] = self.net._compiled_call_impl is not None
            return self.net(batch[0]).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    trainer = build_trainer(
        precision="32-true",
        channels_last=True,
        compile=True,
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    compiled: list[nn.Module] = []

    def record(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        """Stands in for nn.Module.compile (a C++ build takes minutes on 2 cores): marks the module."""
        compiled.append(self)
        self._compiled_call_impl = self._call_impl

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.Module, "compile", record)
        trainer.fit(probe, DataLoader([(torch.rand(3, 8, 8),)], batch_size=1))
    assert seen == {"channels_last": True, "compiled": True}
    assert compiled == [probe.net]
    assert probe.net.weight.is_contiguous() and probe.net._compiled_call_impl is None  # undone after fit


# ------------------------------------------------------------------------------ the attack fingerprint


def test_the_heads_weights_are_hashed_once_until_they_change(monkeypatch: pytest.MonkeyPatch) -> None:
    from splitinv import evaluate
    from splitinv.attacks import OptimizationAttack
    from splitinv.split import Split

    head, _ = cut(_victim(), "layer1")
    attack = OptimizationAttack(name="rmle", steps=1)
    hashed: list[int] = []
    real = torch.Tensor.numpy

    def counting(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        hashed.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", counting)
    first = evaluate._fingerprint(attack, Split(head))
    n_tensors = len(hashed)
    assert n_tensors == len(head.state_dict())
    assert evaluate._fingerprint(attack, Split(head)) == first  # a second reconstruction run: no hashing
    assert len(hashed) == n_tensors
    weight = next(head.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)  # the weights change: the fingerprint follows them
    assert evaluate._fingerprint(attack, Split(head)) != first
    assert len(hashed) == 2 * n_tensors
    with torch.no_grad():
        weight.copy_(saved)
    assert evaluate._fingerprint(attack, Split(head)) == first  # the content decides, not the history


def test_every_results_file_records_the_precision_it_ran_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from splitinv.run import run

    tiny = [
        "victim.image_size=32", "data=fashion_mnist_mini", "data.n_aux=32", "data.n_eval=4",
        "data.batch_size=16", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "logger=csv", "utility_test=false", "baselines=false",
        "cut=layer1",
    ]  # fmt: skip
    monkeypatch.setattr(training, "cpu_has_amx", lambda: True)  # auto: bf16 on this "AMX" CPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = run(compose(tiny, output_dir=tmp_path / "auto"))
        fp32 = run(compose([*tiny, "trainer.precision=32-true"], output_dir=tmp_path / "fp32"))
    assert auto["precision"] == auto["cost"]["precision"] == "bf16-mixed"
    assert fp32["precision"] == fp32["cost"]["precision"] == "32-true"
    on_disk = json.loads((tmp_path / "fp32" / "metrics.json").read_text())
    assert on_disk["precision"] == "32-true"


def test_the_optimisation_loops_read_the_device_every_check_interval() -> None:
    """rMLE's loop and the GAN-inversion / GAN-prior search: 120 steps, checked at steps 1 (the search),
    50, 100 and 120, and a NaN still stops them in one line."""
    from splitinv.attacks.optimize import OptimizeSettings, optimize
    from splitinv.optim import optimize_state

    head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    x = torch.rand(2, 3, 8, 8).as_subclass(OnDevice)
    with torch.no_grad():
        target = head(x)
    syncs.clear()
    optimize(head, target, torch.full_like(x, 0.5), OptimizeSettings(steps=120, lr=0.01))
    assert 1 <= sum(syncs.values()) <= 4, dict(syncs)

    def objective(state: dict[str, torch.Tensor]) -> torch.Tensor:
        return (head(state["z"]) - target).pow(2).flatten(1).mean(1)

    syncs.clear()
    optimize_state({"z": torch.full_like(x, 0.5)}, objective, steps=120, lr=0.01)
    assert 1 <= sum(syncs.values()) <= 4, dict(syncs)

    calls = [0]

    def turns_nan(state: dict[str, torch.Tensor]) -> torch.Tensor:
        calls[0] += 1
        return objective(state) * (float("nan") if calls[0] == 7 else 1.0)

    with pytest.raises(SplitinvError, match=r"^search loss became nan/inf by step 50: lower the learning"):
        optimize_state({"z": torch.full_like(x, 0.5)}, turns_nan, steps=120, lr=0.01)
    assert calls[0] == 50
