"""The two attackers with neither queries nor head weights: query-free (He et al. 2019: the tail, the head's
architecture, auxiliary data) and UnSplit (Erdogan et al. 2022: the head's architecture only). Their contexts
hold no tensor of the head, and both beat the grey baseline on He et al.'s LeNet at conv1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from splitinv.attacks import AttackContext, QueryFreeAttack, UnSplitAttack
from splitinv.attacks.base import architecture_of
from splitinv.defenses import GaussianNoise
from splitinv.errors import SplitinvError
from splitinv.split import split
from splitinv.victims import build_victim


def _reachable_tensors(obj, seen=None):
    """Every tensor reachable from ``obj`` through attributes, containers, modules and closures."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (str, int, float, bool, type)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if isinstance(obj, nn.Module):
        yield from obj.state_dict(keep_vars=True).values()
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _reachable_tensors(v, seen)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _reachable_tensors(v, seen)
    for cell in getattr(obj, "__closure__", None) or ():
        yield from _reachable_tensors(cell.cell_contents, seen)
    for v in getattr(obj, "__dict__", {}).values():
        yield from _reachable_tensors(v, seen)


def _lenet_split(defense=None, method="auto"):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM"):
        victim = build_victim("he2019_mnist", None, image_size=28)
    return victim, split(victim, "conv1", defense, method=method)


@pytest.mark.parametrize("attack", [QueryFreeAttack(), UnSplitAttack()], ids=["query_free", "unsplit"])
def test_blind_attackers_cannot_reach_the_heads_weights(attack):
    victim, s = _lenet_split(GaussianNoise(scale=0.1))
    context = AttackContext.for_attack(attack, s, (1, 28, 28), victim=victim, data="aux", trainer="t")
    assert context.oracle is None and context.split is None and context.victim is None
    if attack.knowledge.access == "query-free":
        assert context.tail is s.tail and context.data == "aux"
    else:
        assert context.tail is None and context.data is None  # the observations only
    assert isinstance(context.defense, GaussianNoise)  # weightless: the adaptive attacker models it
    weights = {name: p for name, p in s.head.named_parameters()}
    assert weights  # the head has weights to hide
    built = context.architecture()
    assert [n for n, _ in built.named_parameters()] == list(weights)  # the same architecture
    x = torch.rand(2, 1, 28, 28)
    assert built(x).shape == s.head(x).shape
    reachable = list(_reachable_tensors(context)) + list(_reachable_tensors(built))
    head_ptrs = {p.data_ptr() for p in weights.values()}
    for t in reachable:
        if t.numel() > 1 and t.dtype.is_floating_point:
            assert t.data_ptr() not in head_ptrs
            assert not any(t.shape == p.shape and torch.equal(t, p) for p in weights.values())
    assert attack.knowledge.access in ("query-free", "architecture")


def test_query_free_refuses_a_tail_that_holds_the_head():
    attack = QueryFreeAttack()
    victim, s = _lenet_split(method="hooks")  # a forward-hook tail keeps the whole network
    with pytest.raises(SplitinvError, match="cut_method=fx") as err:
        AttackContext.for_attack(attack, s, (1, 28, 28), victim=victim)
    assert "\n" not in str(err.value)


def test_architecture_without_reset_parameters_is_refused():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return x * self.w.sum()

    with pytest.raises(SplitinvError, match="reset_parameters"):
        architecture_of(Scale())


def test_wrong_access_is_refused():
    with pytest.raises(SplitinvError, match="architecture"):
        UnSplitAttack(access="white-box")
    with pytest.raises(SplitinvError, match="query-free"):
        QueryFreeAttack(access="black-box")
    with pytest.raises(SplitinvError, match="unsplit2022"):
        UnSplitAttack(preset="paper")
    assert UnSplitAttack(preset="unsplit2022").steps_per_image == 1000 * 200


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_blind_attacks_beat_grey_on_he2019_lenet_at_conv1(tmp_path):
    common = [
        "victim=he2019_mnist", "data=mnist_mini", "cut=conv1", "logger=csv", "lpips=off",
        "utility_test=false", "data.n_eval=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    weights = tmp_path / "lenet.pt"
    train = ["splitinv-train-victim", "recipe=he2019_mnist", "trainer.max_epochs=2"]
    train += [f"checkpoint={weights}", "logger=csv", f"paths.output_dir={tmp_path / 'train'}"]
    proc = subprocess.run(train, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for attack, access in (("query_free", "query-free"), ("unsplit", "architecture")):
        out = tmp_path / attack
        cmd = [
            "splitinv-run",
            *common,
            f"victim.weights={weights}",
            f"attack={attack}",
            f"paths.output_dir={out}",
        ]
        cmd += ["trainer.max_epochs=2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        record = json.loads((out / "metrics.json").read_text())
        assert record["access"] == access and record["attack"] == attack
        grey = record["baselines"]["grey"]
        assert record["ssim"]["mean"] > grey["ssim"]["mean"] + 0.3, attack
        assert record["psnr"]["mean"] > grey["psnr"]["mean"] + 5, attack


@pytest.mark.usefixtures("one_thread")
def test_query_free_trains_its_shadow_through_a_frozen_tail_with_the_he2019_preset():
    import lightning.pytorch as L

    from splitinv.data import MNISTDataModule

    victim, s = _lenet_split()
    tail_state = {k: v.clone() for k, v in s.tail.state_dict().items()}
    data = MNISTDataModule(
        vendored=True, image_size=28, channels=1, n_aux=64, n_eval=4, batch_size=32, augment=False
    )
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    attack = QueryFreeAttack(preset="he2019", progress=False)
    cut = {"name": "conv1", "canonical": "conv1", "paper_depth": "shallow", "victim": "he2019_mnist"}
    cut.update(input_mean=[0.5], input_std=[0.5], relative_depth=0.0)
    context = AttackContext.for_attack(
        attack, s, (1, 28, 28), victim=victim, data=data, trainer=trainer, cut=cut
    )
    start = context.architecture()
    stats = attack.fit(context)
    assert stats["train_steps"] == 2 and stats["train_images"] == 64
    shadow = attack.client.head
    assert not torch.equal(shadow.body.conv1.weight, start.body.conv1.weight)  # trained
    assert not torch.equal(shadow.body.conv1.weight, s.head.body.conv1.weight)  # not the device's
    for key, value in s.tail.state_dict().items():
        assert torch.equal(value, tail_state[key]), key  # the server's half is not moved
    assert all(p.requires_grad for p in s.tail.parameters())  # and left as it was
    # rMLE on the shadow with He et al.'s code settings: normalised image from the mean, eps 1e-3, AMSGrad
    assert (attack.settings.param, attack.settings.eps, attack.settings.amsgrad) == ("normalized", 1e-3, True)
    assert (attack.shadow_lr, attack.shadow_eps, attack.settings.steps) == (1e-3, 1e-3, 500)
    x = torch.rand(2, 1, 28, 28)
    attack.settings.steps = 5
    out = attack.invert(shadow(x), torch.arange(2))
    assert out.images.shape == x.shape and float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    assert attack.describe()["access"] == "query-free"
