"""The split seam: observe/tail round trips, utility, the query oracle, and that every consumer of a run
(learned-attack training, the activation cache, white-box optimisation, evaluation, feature error, label
agreement) reads what the device sends, never the raw head."""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import splitinv
import splitinv.run as run_module
from splitinv.attacks import AttackContext, DecoderAttack, OptimizationAttack
from splitinv.attacks.decoder import DecoderModule
from splitinv.config import compose
from splitinv.cut import stage_points
from splitinv.data import FashionMNISTDataModule
from splitinv.defenses import Defense, NoDefense
from splitinv.errors import SplitinvError
from splitinv.run import run
from splitinv.split import Client, QueryOracle, Split, split
from splitinv.victims import build_victim

pytestmark = pytest.mark.usefixtures("one_thread")


def _victim(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, said loudly elsewhere
        return build_victim(name, image_size=size, num_classes=10).eval()


class Offset(Defense):
    """A deterministic stand-in defense: shifts every activation by 100 and counts its calls."""

    name = "offset"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return h + 100.0


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    ("name", "size", "method"),
    [("resnet18", 32, "fx"), ("resnet18", 32, "hooks"), ("mobilenet_v3_large", 32, "auto"),
     ("deit_small_patch16_224", 32, "auto")],
)  # fmt: skip
def test_tail_of_observe_is_the_victim_without_a_defense(name: str, size: int, method: str) -> None:
    victim = _victim(name, size)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = victim(x)
        for point in stage_points(victim):
            s = split(victim, point, method=method)
            assert isinstance(s.defense, NoDefense) and s.point == point
            torch.testing.assert_close(s.tail(s.observe(x)), expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(s(x), expected, atol=1e-5, rtol=0)


def test_observe_applies_the_defense_and_a_spec_resolves() -> None:
    victim = _victim("resnet18", 32)
    s = split(victim, "stage:2", Offset())
    assert s.point == "layer1"  # stage:2 of ResNet-18 (the stem is stage 1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(s.observe(x), s.head(x) + 100.0)
    with pytest.raises(SplitinvError, match="must be a splitinv.defenses.Defense"):
        Split(s.head, s.tail, nn.Identity())  # type: ignore[arg-type]


def test_utility_measures_the_defended_split() -> None:
    victim = _victim("resnet18", 32)
    data = FashionMNISTDataModule(vendored=True, image_size=32, n_eval=8, batch_size=4)
    batches = list(data.predict_dataloader())
    x = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        accuracy = float((victim(x).argmax(1) == labels).float().mean())
    plain = split(victim, "layer2").utility(batches)
    assert plain == {"accuracy": pytest.approx(accuracy), "agreement": 1.0, "n": 8}

    class Zero(Defense):
        name = "zero"

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(h)

    s = split(victim, "layer2", Zero())
    with torch.no_grad():
        constant = s.tail(torch.zeros(1, *s.head(x[:1]).shape[1:])).argmax(1)
        clean = victim(x).argmax(1)
    defended = s.utility(batches)
    assert defended["agreement"] == pytest.approx(float((clean == constant).float().mean()))
    assert defended["accuracy"] == pytest.approx(float((labels == constant).float().mean()))
    unlabelled = [(b[0], torch.full_like(b[1], -1)) for b in batches]
    assert s.utility(unlabelled)["accuracy"] is None
    with pytest.raises(SplitinvError, match="no tail"):
        Split(s.head).utility(batches)


# ------------------------------------------------------------------------------------ the threat model


def test_a_black_box_attacker_gets_an_oracle_it_cannot_read_or_differentiate() -> None:
    victim = _victim("resnet18", 32)
    s = split(victim, "layer1", Offset())
    attack = DecoderAttack()
    context = AttackContext.for_attack(attack, s, (3, 32, 32), victim=victim, data="aux")
    assert context.split is None and context.victim is None and context.data == "aux"
    oracle = context.oracle
    assert isinstance(oracle, QueryOracle)
    assert not hasattr(oracle, "parameters") and not hasattr(oracle, "state_dict")
    assert not hasattr(oracle, "__dict__")  # slots only: no attribute to hang a module on
    assert not any(isinstance(getattr(oracle, n), nn.Module) for n in oracle.__slots__)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    v = oracle(x)
    with torch.no_grad():
        torch.testing.assert_close(v, s.observe(x))  # what the server receives, defense included
    assert not v.requires_grad
    with pytest.raises(RuntimeError):
        torch.autograd.grad(v.sum(), x)
    # a white-box attacker gets the modules; a naive one models the undefended split
    white = AttackContext.for_attack(OptimizationAttack(), s, (3, 32, 32), victim=victim)
    assert white.split is s and white.victim is victim and white.data is None  # rMLE: aux_data none
    naive_attack = OptimizationAttack(defense_aware=False)
    naive = AttackContext.for_attack(naive_attack, s, (3, 32, 32))
    assert isinstance(naive.split.defense, NoDefense) and naive.split.head is s.head
    with torch.no_grad():
        torch.testing.assert_close(naive.oracle(x), s.head(x))


def test_decoder_training_moves_no_batchnorm_statistic() -> None:
    victim = _victim("resnet18", 32)
    before = victim.model.bn1.running_mean.clone()
    module = DecoderModule(
        split(victim, "layer1").oracle(), splitinv.attacks.build_decoder((64, 8, 8), (3, 32, 32))
    )
    module.train()
    module.training_step((torch.rand(4, 3, 32, 32),), 0)
    assert torch.equal(victim.model.bn1.running_mean, before) and not victim.training


# ------------------------------------------------------------------- no path reads the raw head in a run


class GuardedHead(nn.Module):
    """Wraps a head; raises when it runs anywhere but inside the split's own code (observe, utility)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.inner = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frame = inspect.currentframe()
        for _ in range(8):
            frame = frame.f_back if frame is not None else None
            owner = frame.f_locals.get("self") if frame is not None else None
            if isinstance(owner, (Client, Split)):
                return self.inner(x)
        raise AssertionError("the raw head was run outside Split.observe")


TINY = [
    "victim=resnet18", "victim.image_size=32", "data=fashion_mnist_mini", "data.n_aux=32",
    "data.n_eval=4", "data.batch_size=8", "trainer.max_epochs=1", "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false", "logger=csv", "cut=layer1", "lpips=off", "utility_test=false",
]  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [
        ["attack=decoder"],
        ["attack=decoder", "cache.enabled=true"],
        ["attack=rmle", "attack.steps=3", "attack.lr=0.01", "attack.progress=false"],
        ["attack=rmle", "attack.steps=3", "attack.lr=0.01", "attack.progress=false",
         "attack.defense_aware=false"],
    ],
    ids=["decoder", "decoder-cached", "rmle", "rmle-naive"],
)  # fmt: skip
def test_every_consumer_reads_what_the_device_sends(
    overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Split] = []
    seen: list[float] = []

    def guarded_split(victim: nn.Module, point: str, defense: Any = None, method: str = "auto") -> Split:
        real = split(victim, point, Offset(), method=method)
        real.client.head = GuardedHead(real.client.head)
        made.append(real)
        return real

    original = DecoderModule.observations

    def spy(self: DecoderModule, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, f = original(self, batch)
        seen.append(float(f.mean()))
        return x, f

    monkeypatch.setattr(run_module, "split", guarded_split)
    monkeypatch.setattr(DecoderModule, "observations", spy)
    cache = [f"cache.dir={tmp_path / 'cache'}"]
    record = run(compose([*TINY, *overrides, *cache], output_dir=tmp_path / "run"))
    (the_split,) = made
    assert the_split.defense.calls > 0 and record["status"] == "ok"
    if overrides[0] == "attack=decoder":
        assert seen and min(seen) > 50  # trained on defended observations (offset 100), cached or not
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["defense"] == "offset" and saved["details"]["defense"] == {"name": "offset"}
    assert saved["defense_aware"] == ("attack.defense_aware=false" not in overrides)
    assert set(saved["utility"]) == {"accuracy", "agreement", "n"} and saved["utility"]["n"] == 4
    # feature error compares observations: with both sides shifted by 100 it is tiny
    assert saved["feature_error"]["mean"] < 0.05


def test_the_default_run_records_no_defense_and_utility(tmp_path: Path) -> None:
    record = run(compose([*TINY, "attack=decoder", "utility_test=true"], output_dir=tmp_path))
    assert record["defense"] == "none" and record["defense_aware"] is True
    assert record["utility"]["agreement"] == 1.0 and 0 <= record["utility"]["accuracy"] <= 1
    assert record["utility_test"]["n"] == 1000 and record["utility_test"]["agreement"] == 1.0  # test split
    assert record["access"] == "black-box" and record["aux_data"] == "same"
