"""`splitinv weights import` (weights brought from another machine, checksums checked), `splitinv doctor`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from splitinv import cli, doctor, metrics, weights
from splitinv.errors import SplitinvError

PUBLISHED_ALEX = "alexnet-owt-7be5be79.pth"


def _alexnet_file(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """torchvision's AlexNet state_dict with seeded random weights, saved under a name carrying its own
    SHA-256 prefix (as torchvision names its files): a file whose checksum its name vouches for."""
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    tmp = folder / "alexnet.tmp"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"alexnet-owt-{digest[:8]}.pth"
    tmp.rename(path)
    return path, state


@pytest.fixture
def own_alexnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, torch.Tensor]]:
    """A made-up AlexNet file standing for torchvision's published one: the published file's name (and so its
    checksum) is replaced by this file's, everywhere splitinv reads it (no real weights can be downloaded
    here, and no file can be made to match the real checksum)."""
    path, state = _alexnet_file(tmp_path / "brought")
    monkeypatch.setitem(metrics.LPIPS_NETS, "alex", {**metrics.LPIPS_NETS["alex"], "file": path.name})
    monkeypatch.setattr(weights, "LPIPS_FILES", {path.name: "alex", "vgg16-397923af.pth": "vgg"})
    monkeypatch.setattr(weights, "torchvision_files", lambda: {path.name: "alexnet (AlexNet_Weights.X)"})
    metrics.clear_lpips_cache()
    yield path, state
    metrics.clear_lpips_cache()


@pytest.fixture(autouse=True)
def _brought(tmp_path: Path) -> None:
    (tmp_path / "brought").mkdir()


def test_torchvision_publishes_the_lpips_backbones_under_the_names_splitinv_reads() -> None:
    files = weights.torchvision_files()
    for spec in metrics.LPIPS_NETS.values():
        assert spec["file"] in files and spec["file"] in weights.LPIPS_FILES
    assert files["resnet18-f37072fd.pth"].startswith("resnet18 (ResNet18_Weights.IMAGENET1K_V1)")


def test_import_makes_lpips_available_offline(own_alexnet, tmp_path: Path) -> None:
    path, state = own_alexnet
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert not metrics.lpips_available("alex")  # offline (conftest): no file, no download
    assert metrics.score(x, y, lpips="auto")["lpips"] is None

    (item,) = weights.import_weights([str(path)])
    target = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / path.name
    assert item.target == target and target.read_bytes() == path.read_bytes() and not item.unchanged
    assert "LPIPS-alex backbone" in item.what
    assert weights.import_weights([str(path)])[0].unchanged  # a second import finds it there

    # LPIPS now scores with exactly these backbone weights: the lpips package built by hand from them agrees
    import lpips

    reference = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    tv_names = [k for k in state if k.startswith("features.")]
    reference.net.load_state_dict(
        {n: state["features." + n.split(".", 1)[1]] for n in reference.net.state_dict()}, strict=True
    )
    assert tv_names and metrics.lpips_available("alex")
    expected = reference(x * 2 - 1, y * 2 - 1).flatten()
    torch.testing.assert_close(metrics.lpips(x, y), expected, atol=1e-5, rtol=1e-5)


def test_a_renamed_file_is_recognised_by_its_checksum(own_alexnet, tmp_path: Path) -> None:
    path, _ = own_alexnet
    renamed = path.with_name("my copy of alexnet.pth")
    renamed.write_bytes(path.read_bytes())
    (item,) = weights.import_weights([str(renamed)])
    assert item.target.name == path.name and item.target.read_bytes() == path.read_bytes()


def test_a_wrong_checksum_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """The real published name with other bytes: refused, the cache left without the file or a temporary."""
    bad = tmp_path / "brought" / PUBLISHED_ALEX
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    good_looking = tmp_path / "brought" / "notes.txt"
    good_looking.write_text("not weights")
    cache = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    with pytest.raises(
        SplitinvError, match=r"checksum mismatch: its SHA-256 starts with \w{8}, .*7be5be79"
    ) as e:
        weights.import_weights([str(bad)])
    assert "\n" not in str(e.value)
    with pytest.raises(SplitinvError, match="none of torchvision's published weight files"):
        weights.import_weights([str(good_looking)])
    assert not cache.exists() or not any(cache.iterdir())
    assert not metrics.lpips_available("alex", download=False)


def test_every_file_is_checked_before_any_is_copied(own_alexnet, tmp_path: Path) -> None:
    path, _ = own_alexnet
    bad = tmp_path / "brought" / "other.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(SplitinvError, match="other.pth is none of"):
        weights.import_weights([str(path), str(bad)])
    assert not (Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / path.name).exists()


def test_the_command_prints_one_line_per_file_and_errors_in_one_line(own_alexnet, capsys, tmp_path) -> None:
    path, _ = own_alexnet
    cli.main(["weights", "import", str(path)])
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{path} -> ") and out.endswith("copied") and "\n" not in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["weights", "import", str(tmp_path / "missing.pth")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "does not exist" in err
    with pytest.raises(SystemExit):
        cli.main(["weights", "import", str(path), "--sha256", "00"])
    assert "--sha256 is for --timm" in capsys.readouterr().err


def test_timm_checkpoint_lands_where_timm_loads_it_offline(tmp_path: Path, monkeypatch) -> None:
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(1)
    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    path = tmp_path / "brought" / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.raises(SplitinvError, match="checksum mismatch"):
        weights.import_weights([str(path)], timm_model="resnet10t.c3_in1k", sha256="0" * 64)
    with pytest.raises(SplitinvError, match="does not fit timm's resnet18.a1_in1k"):
        weights.import_weights([str(path)], timm_model="resnet18.a1_in1k")
    assert not (tmp_path / "hf_hub").exists()

    (item,) = weights.import_weights([str(path)], timm_model="resnet10t.c3_in1k", sha256=digest.upper())
    assert item.target.name == "model.safetensors" and "timm/resnet10t.c3_in1k" in item.what
    loaded = timm.create_model("resnet10t.c3_in1k", pretrained=True).state_dict()  # offline: from the cache
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value)


def test_doctor_reports_lpips_before_and_after_import(own_alexnet, capsys) -> None:
    path, _ = own_alexnet
    rows, broken, missing = doctor.diagnose()
    table = dict(rows)
    assert not broken and table["LPIPS-alex backbone"].endswith("missing")
    assert any(f"splitinv weights import {path.name}" in m for m in missing)
    assert table["torch"].startswith(torch.__version__)
    weights.import_weights([str(path)])
    assert dict(doctor.diagnose()[0])["LPIPS-alex backbone"].endswith("present")


def test_doctor_catches_a_torchvision_built_for_another_torch(monkeypatch, capsys) -> None:
    """What a CPU torch beside a torchvision built for another torch looks like: its operators are missing."""
    import torchvision.ops

    def missing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(torchvision.ops, "nms", missing)
    assert doctor.main() == 1
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("problem:")]
    assert "torchvision::nms does not exist" in line and "same index" in line
