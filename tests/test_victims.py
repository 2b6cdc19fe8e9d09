"""Tests for splitinv.victims: building by name, normalisation, weight sources (torchvision and timm caches,
files, splitinv checkpoints), and the one-line errors. Nothing here touches the network or the real caches."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
import torchvision
import yaml
from safetensors.torch import save_file

from splitinv import build_victim
from splitinv.errors import SplitinvError
from splitinv.registry import Registry, import_target
from splitinv.victims import (
    CHECKPOINT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VICTIMS,
    Victim,
    check_image_size,
    register_victim,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "victim"
# the configs that build a victim by name (victim=custom builds your own network: tests/test_custom_victim.py)
CONFIGS = sorted(
    p
    for p in CONF.glob("*.yaml")
    if yaml.safe_load(p.read_text())["victim"]["_target_"] == "splitinv.victims.build_victim"
)
RANDOM = pytest.mark.filterwarnings("ignore:victim .* has RANDOM weights:UserWarning")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    """Every test gets empty torch and Hugging Face caches under tmp_path, and no network at all."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads its environment at import time: patch the values it uses at call time
    monkeypatch.setattr(hf_constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def no_download(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """model's state_dict with every floating tensor replaced by seeded noise (distinct from any init)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(v.shape, generator=gen)
        elif v.is_floating_point():
            state[k] = 0.05 * torch.randn(v.shape, generator=gen)
        else:
            state[k] = v.clone()
    return state


def _assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


# -------------------------------------------------------------------------------------------------- by name


def test_every_configured_victim_resolves_to_its_family():
    from splitinv.victims import VICTIMS, _resolve_family

    assert CONFIGS, "no victim configs found"
    families = {}
    for path in CONFIGS:
        name = yaml.safe_load(path.read_text())["victim"]["name"]
        if name in VICTIMS:  # registered by splitinv itself (a paper's network): no library family
            continue
        family, resolved = _resolve_family(name)
        assert resolved == name
        families[name] = family
    assert families["resnet18"] == "torchvision" and families["resnet10t"] == "timm"
    assert families["deit_small_patch16_224"] == "timm" and families["vit_b_16"] == "torchvision"


@RANDOM
@pytest.mark.parametrize(
    ("name", "family", "size"),
    [
        ("resnet18", "torchvision", 32),
        ("resnet10t", "timm", 32),
        ("timm/resnet18", "timm", 32),
        ("deit_small_patch16_224", "timm", 32),
    ],
)
def test_build_by_name_normalises_inside(name, family, size):
    victim = build_victim(name, image_size=size, num_classes=7)
    assert isinstance(victim, Victim) and not victim.training and not victim.model.training
    assert victim.family == family and victim.name == name.split("/")[-1]
    assert victim.image_size == size and victim.num_classes == 7
    assert victim.mean == IMAGENET_MEAN and victim.std == IMAGENET_STD
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(victim.mean).view(1, 3, 1, 1)
    std = torch.tensor(victim.std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = victim(x)
        assert torch.equal(out, victim.model((x - mean) / std))
        assert not torch.allclose(out, victim.model(x))  # the normalisation is really applied
    assert out.shape == (2, 7)
    info = victim.describe()
    assert info == {
        "name": victim.name,
        "family": family,
        "weights": "random",
        "pretrained": False,
        "image_size": size,
        "num_classes": 7,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


@RANDOM
def test_vits_are_built_for_the_requested_size():
    deit = build_victim("deit_small_patch16_224", image_size=32)
    assert deit.model.pos_embed.shape == (1, 1 + (32 // 16) ** 2, 384)
    with torch.no_grad():
        assert deit(torch.rand(2, 3, 32, 32)).shape == (2, 1000)


def test_random_weights_warn_and_are_recorded():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        victim = build_victim("resnet18", image_size=32)
    assert victim.weights == "random" and victim.describe()["pretrained"] is False
    assert victim.num_classes == 1000 and victim.image_size == 32
    for spelling in ("null", "random", "None"):
        with pytest.warns(UserWarning, match="RANDOM weights"):
            assert build_victim("resnet18", weights=spelling).weights == "random"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(SplitinvError) as excinfo:
        build_victim("resnt18")
    message = _one_line_error(excinfo)
    assert "'resnt18'" in message and "Did you mean resnet18" in message
    suggested = message.split("Did you mean ", 1)[1].split("?")[0].split(", ")
    assert len(suggested) == len(set(suggested)), f"duplicate suggestions: {suggested}"
    with pytest.raises(SplitinvError, match="unknown timm model 'no_such_net'"):
        build_victim("timm/no_such_net")
    with pytest.raises(SplitinvError, match="unknown torchvision classifier 'deit_small_patch16_224'"):
        build_victim("torchvision/deit_small_patch16_224")


@RANDOM
def test_check_image_size():
    vit = build_victim("vit_b_16", image_size=224)
    with pytest.raises(SplitinvError) as excinfo:
        check_image_size(vit, 64)
    message = _one_line_error(excinfo)
    assert "vit_b_16 cannot take 64x64" in message and "built for 224 px" in message
    assert "victim.image_size" in message
    vit.train()
    check_image_size(vit, 224)  # fine, and the mode is restored
    assert vit.training
    check_image_size(build_victim("resnet18"), 32)


# -------------------------------------------------------------------------------------------------- imagenet


def test_torchvision_imagenet_from_the_torch_hub_cache(offline_caches):
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    folder = offline_caches / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    state = _random_state(torchvision.models.resnet18(), seed=1)
    torch.save(state, folder / os.path.basename(weights.url))

    victim = build_victim("resnet18", "imagenet")
    _assert_same_state(victim.model, state)
    transform = weights.transforms()
    assert victim.weights == "imagenet" and victim.family == "torchvision"
    assert victim.mean == tuple(transform.mean) and victim.std == tuple(transform.std)
    assert victim.image_size == 224 and victim.num_classes == len(weights.meta["categories"]) == 1000
    assert not victim.training


def test_torchvision_imagenet_offline_without_cache_names_file_and_folder(offline_caches):
    with pytest.raises(SplitinvError) as excinfo:
        build_victim("resnet18", "imagenet")
    message = _one_line_error(excinfo)
    filename = os.path.basename(torchvision.models.ResNet18_Weights.DEFAULT.url)
    assert filename in message
    assert str(offline_caches / "torch" / "hub" / "checkpoints") in message
    assert isinstance(excinfo.value.__cause__, urllib.error.URLError)


@pytest.mark.parametrize("content", ["garbage", "ten classes"])
def test_torchvision_imagenet_bad_cached_file(offline_caches, content):
    """A truncated download or a wrong file in the cache: a one-line error naming the file."""
    path = (
        offline_caches
        / "torch"
        / "hub"
        / "checkpoints"
        / os.path.basename(torchvision.models.ResNet18_Weights.DEFAULT.url)
    )
    path.parent.mkdir(parents=True)
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(SplitinvError) as excinfo:
        build_victim("resnet18", "imagenet")
    message = _one_line_error(excinfo)
    assert str(path) in message and "delete or replace" in message


def test_torchvision_imagenet_refuses_other_num_classes():
    with pytest.raises(SplitinvError, match="1000 classes, not 10"):
        build_victim("resnet18", "imagenet", num_classes=10)


def _fake_hf_snapshot(hub: Path, repo_id: str, filename: str, tensors: dict[str, torch.Tensor]) -> Path:
    """The layout huggingface_hub's cache has after a download: refs/main -> snapshots/<commit>/<file>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(snapshot / filename))
    return snapshot / filename


def test_timm_imagenet_from_the_hugging_face_cache(offline_caches):
    cfg = timm.models.get_pretrained_cfg("resnet10t")
    assert cfg.hf_hub_id  # timm 1.x takes resnet10t's weights from the Hugging Face hub
    state = _random_state(timm.create_model("resnet10t"), seed=2)
    _fake_hf_snapshot(offline_caches / "hf" / "hub", cfg.hf_hub_id, "model.safetensors", state)

    victim = build_victim("resnet10t", "imagenet")
    _assert_same_state(victim.model, state)
    assert victim.weights == "imagenet" and victim.family == "timm"
    assert victim.mean == tuple(cfg.mean) and victim.std == tuple(cfg.std)
    assert victim.image_size == cfg.input_size[-1] and victim.num_classes == 1000
    # an explicit size is kept (CNN weights take any size)
    assert build_victim("resnet10t", "imagenet", image_size=64).image_size == 64


def test_timm_imagenet_offline_without_cache_names_where_to_put_them(offline_caches):
    with pytest.raises(SplitinvError) as excinfo:
        build_victim("resnet10t", "imagenet")
    message = _one_line_error(excinfo)
    assert "resnet10t" in message
    assert str(offline_caches / "hf" / "hub") in message  # the folder huggingface_hub looks in
    assert timm.models.get_pretrained_cfg("resnet10t").hf_hub_id in message
    assert not (Path.home() / ".cache" / "huggingface" / "hub" / "models--timm--resnet10t.c3_in1k").exists()


def test_timm_error_names_the_hub_cache_huggingface_hub_uses(offline_caches, monkeypatch):
    """HF_HUB_CACHE set apart from HF_HOME: the message must name the folder huggingface_hub looks in."""
    elsewhere = offline_caches / "elsewhere"
    monkeypatch.setenv("HF_HUB_CACHE", str(elsewhere))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(elsewhere))
    with pytest.raises(SplitinvError) as excinfo:
        build_victim("resnet10t", "imagenet")
    assert str(elsewhere) in _one_line_error(excinfo)


# -------------------------------------------------------------------------------------------------- files


@RANDOM
def test_plain_state_dict_file(tmp_path):
    state = _random_state(torchvision.models.resnet18(num_classes=10), seed=3)
    path = tmp_path / "r18.pt"
    torch.save(state, path)
    victim = build_victim("resnet18", path, num_classes=10, image_size=32)
    _assert_same_state(victim.model, state)
    assert victim.weights == str(path) and victim.describe()["pretrained"] is True
    assert victim.num_classes == 10 and victim.image_size == 32
    assert victim.mean == IMAGENET_MEAN and not victim.training
    # a {"state_dict": ...} wrapper is accepted too
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    _assert_same_state(build_victim("resnet18", tmp_path / "wrapped.pt", num_classes=10).model, state)


def test_victim_checkpoint_round_trip(tmp_path):
    model = torchvision.models.resnet18(num_classes=7)
    model.load_state_dict(_random_state(model, seed=4))
    original = Victim(
        model,
        name="resnet18",
        family="torchvision",
        weights="random",
        image_size=48,
        num_classes=7,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    ).eval()
    ckpt = original.checkpoint()
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["name"] == "resnet18"
    torch.save(ckpt, tmp_path / "victim.ckpt")

    loaded = build_victim("resnet18", str(tmp_path / "victim.ckpt"))  # no num_classes, no image_size
    _assert_same_state(loaded.model, original.model.state_dict())
    assert loaded.num_classes == 7 and loaded.image_size == 48
    assert loaded.mean == (0.5, 0.4, 0.3) and loaded.std == (0.2, 0.25, 0.3)
    assert loaded.weights == str(tmp_path / "victim.ckpt")
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))


@RANDOM
def test_vit_checkpoint_restores_its_size(tmp_path):
    """A ViT built for 32 px has 5 position embeddings: its checkpoint must be rebuilt for 32 px."""
    original = build_victim("deit_small_patch16_224", image_size=32, num_classes=5)
    torch.save(original.checkpoint(), tmp_path / "deit.ckpt")
    loaded = build_victim("deit_small_patch16_224", tmp_path / "deit.ckpt")
    assert loaded.image_size == 32 and loaded.num_classes == 5
    _assert_same_state(loaded.model, original.model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))


class _Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["SPLITINV_TEST_MARKER"]),))


@RANDOM
def test_bad_weight_files_give_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(SplitinvError) as excinfo:
        build_victim("resnet18", tmp_path / "missing.pt")
    assert "does not exist" in _one_line_error(excinfo) and str(tmp_path / "missing.pt") in str(excinfo.value)

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "ten.pt")
    with pytest.raises(SplitinvError) as excinfo:  # the library default is 1000 classes
        build_victim("resnet18", tmp_path / "ten.pt")
    message = _one_line_error(excinfo)
    assert "do not fit resnet18" in message and "fc.weight" in message and "num_classes" in message

    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "resnet10t.pt")
    with pytest.raises(SplitinvError) as excinfo:  # another architecture's state_dict
        build_victim("resnet18", tmp_path / "resnet10t.pt")
    assert "do not fit resnet18" in _one_line_error(excinfo)

    torch.save(build_victim("resnet10t", image_size=32).checkpoint(), tmp_path / "other.ckpt")
    with pytest.raises(SplitinvError) as excinfo:  # another architecture's splitinv checkpoint
        build_victim("resnet18", tmp_path / "other.ckpt")
    message = _one_line_error(excinfo)
    assert "holds a resnet10t victim" in message and "victim.name=resnet10t" in message

    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(SplitinvError) as excinfo:
        build_victim("resnet18", tmp_path / "list.pt")
    assert "not a state_dict" in _one_line_error(excinfo)

    marker = tmp_path / "code-ran"
    monkeypatch.setenv("SPLITINV_TEST_MARKER", str(marker))
    torch.save({"fc.weight": _Payload()}, tmp_path / "pickle.pt")
    assert not marker.exists()
    with pytest.raises(SplitinvError) as excinfo:
        build_victim("resnet18", tmp_path / "pickle.pt")
    assert "safely" in _one_line_error(excinfo) and "weights_only" in str(excinfo.value)
    assert not marker.exists(), "loading a victim file ran code from the pickle"
    torch.load(tmp_path / "pickle.pt", weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


# ------------------------------------------------------------------------------------- registry, imports


def test_registry_lookup_lazy_entries_and_one_line_errors():
    reg: Registry = Registry("widget", "Register yours with reg.register.")
    assert reg.register("path", "pathlib:Path") == "pathlib:Path" and reg.is_lazy("path")

    @reg.register("double")
    def double(x):
        return 2 * x

    assert reg.names() == list(reg) == ["double", "path"] and len(reg) == 2 and "double" in reg
    assert reg["double"] is double and reg.get("path") is Path and not reg.is_lazy("path")
    assert reg.items() == [("double", double), ("path", Path)]
    with pytest.raises(SplitinvError) as excinfo:
        reg.get("doubel")
    assert _one_line_error(excinfo) == (
        "unknown widget 'doubel'. Did you mean double? Known: double, path. Register yours with reg.register."
    )
    reg.register("broken", "no_such_module_here:thing")
    with pytest.raises(SplitinvError, match=r"^widget broken=no_such_module_here:thing: module "):
        reg.get("broken")
    with pytest.raises(SplitinvError, match="is not of the form 'module:attr'"):
        reg.register("bad", "pathlib.Path")
    assert import_target("os.path:join") is os.path.join
    with pytest.raises(
        SplitinvError, match=r"^f=os.path:jion: os.path has no attribute 'jion'. Did you mean join"
    ):
        import_target("os.path:jion", what="f")


@RANDOM
def test_registered_victims_build_by_name():
    assert "dcgan_discriminator" in VICTIMS.names()  # a lazy entry: listing it imports nothing

    @register_victim("tiny_test_victim")
    def build(weights, num_classes=None, image_size=None, **kwargs):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, num_classes or 2))
        return Victim(model, name="tiny_test_victim", family="test", weights="random", image_size=8,
                      num_classes=num_classes or 2)  # fmt: skip

    try:
        assert build_victim("tiny_test_victim", num_classes=3).num_classes == 3
        disc = build_victim("dcgan_discriminator", image_size=16)  # imports splitinv.gans.dcgan now
        assert type(disc.model).__name__ == "DCGANDiscriminator" and disc(torch.rand(2, 3, 16, 16)).shape == (
            2,
            1,
        )
    finally:
        VICTIMS._entries.pop("tiny_test_victim")


def test_import_splitinv_is_light():
    """`import splitinv` (and its errors) loads no torch, timm, W&B, Lightning nor any GAN adapter; the
    exported names still resolve, and splitinv.cut / splitinv.split stay the functions."""
    code = (
        "import sys, splitinv, splitinv.errors\n"
        "heavy = ('torch', 'timm', 'wandb', 'lightning', 'pytorch_lightning', 'torchvision')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('splitinv.gans')))\n"
        "assert splitinv.SplitinvError.__module__ == 'splitinv.errors' and splitinv.__version__\n"
        "import splitinv.cut, splitinv.split\n"
        "assert callable(splitinv.cut) and callable(splitinv.split) and splitinv.Split.__name__ == 'Split'\n"
        "assert splitinv.metrics.__name__ == 'splitinv.metrics' and 'wrap_module' in dir(splitinv)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('timm', 'wandb', 'lightning')))\n"
        "assert set(splitinv.__all__) == {'__version__', *splitinv._EXPORTS}\n"
        "assert all(getattr(splitinv, name) is not None for name in splitinv.__all__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout
