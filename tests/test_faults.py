"""Fault injection: changed, truncated, empty and misplaced files of every kind splitinv writes, checkpoints
that do not fit the run, images that used to decode wrongly or fail late, model sizes a constructor ignored,
and cut points a tiny network output let through. Each must end in one line that says what was wrong (exit 2
from a command), or be handled correctly.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import splitinv.run as run_module
from splitinv.attacks.base import AttackContext
from splitinv.attacks.dci import DCIAttack, InverterChain, load_chain
from splitinv.attacks.decoder import DecoderAttack, load_decoder
from splitinv.config import compose
from splitinv.cut import cut, cut_points
from splitinv.data import ImageFolderDataModule
from splitinv.decoders import build_decoder
from splitinv.defenses import GaussianNoise
from splitinv.defenses.checkpoint import defense_record, read_defense
from splitinv.errors import SplitinvError
from splitinv.evaluate import ReconstructionStore
from splitinv.gans.dcgan import DCGANDiscriminator, DCGANGenerator
from splitinv.gans.registry import build_generator
from splitinv.gans.train import save_gan
from splitinv.io import CHECKSUM_KEY, save_atomic
from splitinv.results import load_images, save_images
from splitinv.run import run
from splitinv.split import split
from splitinv.task import run_task
from splitinv.train_victim import save_victim
from splitinv.victims import build_victim

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:victim .* has RANDOM weights:UserWarning"),
]

TINY_RUN = [
    "victim.image_size=32",
    "data=fashion_mnist_mini",
    "data.n_aux=32",
    "data.n_eval=4",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "baselines=false",
    "utility_test=false",
]


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def _largest(obj: Any) -> torch.Tensor:
    """The largest floating tensor inside a (nested) dict: the one whose stored bytes get changed."""
    found: list[torch.Tensor] = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    walk(obj)
    return max(found, key=lambda t: t.numel())


def _flip(path: Path, tensor: torch.Tensor) -> None:
    """Overwrite 4 bytes of ``tensor``'s data inside the file with 0x7f7f7f7f (as float32: 3.4e38, finite)."""
    data = bytearray(path.read_bytes())
    needle = tensor.detach().contiguous().view(-1).view(torch.uint8)[:32].numpy().tobytes()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "the tensor's bytes must appear once in the file"
    data[at + 4 : at + 8] = b"\x7f\x7f\x7f\x7f"
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# -------------------------------------------------------------------------------- the files splitinv writes


def _victim_file(path: Path) -> tuple[torch.Tensor, Callable[[], Any]]:
    victim = build_victim("resnet10t", image_size=32, num_classes=4)
    save_victim(victim, path)
    return _largest(victim.checkpoint()), lambda: build_victim("resnet10t", weights=path)


def _decoder_file(path: Path) -> tuple[torch.Tensor, Callable[[], Any]]:
    attack = DecoderAttack()
    attack.decoder = build_decoder((32, 4, 4), (3, 16, 16), 16)
    attack.save(path)
    return _largest(attack.decoder.state_dict()), lambda: load_decoder(path)


def _dci_file(path: Path) -> tuple[torch.Tensor, Callable[[], Any]]:
    attack = DCIAttack()
    attack.chain = InverterChain([(3, 16, 16), (8, 8, 8)], width=16)
    attack.save(path)
    return _largest(attack.chain.state_dict()), lambda: load_chain(path)


def _gan_file(path: Path) -> tuple[torch.Tensor, Callable[[], Any]]:
    generator = DCGANGenerator(nz=8, ngf=8, channels=1, image_size=16)
    save_gan(generator, DCGANDiscriminator(ndf=8, channels=1, image_size=16), path)
    return _largest(generator.state_dict()), lambda: build_generator("dcgan", weights=path)


def _defense_file(path: Path) -> tuple[torch.Tensor, Callable[[], Any]]:
    victim = build_victim("resnet10t", image_size=32, num_classes=4)
    record = {**victim.checkpoint(), **defense_record(GaussianNoise(scale=0.1), "layer1", [32, 8, 8])}
    save_atomic(record, path)
    return _largest(record), lambda: read_defense(path)


def _images_file(path: Path) -> tuple[torch.Tensor, Callable[[], Any]]:
    gen = torch.Generator().manual_seed(0)
    save_images(path, torch.rand(2, 3, 16, 16, generator=gen), torch.rand(2, 3, 16, 16, generator=gen))
    return torch.load(path, weights_only=True)["originals"], lambda: load_images(path)


KINDS = {
    "victim": _victim_file,
    "decoder": _decoder_file,
    "dci": _dci_file,
    "gan": _gan_file,
    "defense": _defense_file,
    "images": _images_file,
}
FAULTS = {
    "flipped": (_flip, r"is corrupt: tensor \S+ does not match the checksum splitinv wrote"),
    "truncated": (lambda p, t: _truncate(p), r"is corrupt or not a checkpoint \(\w+: "),
    "empty": (lambda p, t: p.write_bytes(b""), r"is corrupt or not a checkpoint \(empty file, 0 bytes\)"),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_file_splitinv_writes_refuses_changed_truncated_and_empty_copies(
    tmp_path: Path, kind: str, fault: str
) -> None:
    path = tmp_path / f"{kind}.pt"
    tensor, load = KINDS[kind](path)
    assert CHECKSUM_KEY in torch.load(path, weights_only=True)
    load()  # the intact file loads
    inject, message = FAULTS[fault]
    inject(path, tensor)
    if fault == "flipped":  # weights_only loading alone accepts the changed bytes
        assert torch.load(path, weights_only=True) is not None
    with pytest.raises(SplitinvError, match=message) as err:
        load()
    assert str(path) in _one_line(err)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_changed_stored_reconstruction_is_attacked_again_with_a_warning(
    tmp_path: Path, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ReconstructionStore(tmp_path)
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    store.put(0, "key", image, loss=0.5)
    assert torch.equal(store.get(0, "key"), image)
    FAULTS[fault][0](store.path(0), image)
    with caplog.at_level(logging.WARNING, logger="splitinv.evaluate"):
        assert store.get(0, "key") is None
    assert str(store.path(0)) in caplog.text and "attacking image 0 again" in caplog.text


def test_a_folder_given_as_a_file_says_so(tmp_path: Path) -> None:
    for load in (
        lambda: build_victim("resnet10t", weights=tmp_path),
        lambda: load_decoder(tmp_path),
        lambda: load_chain(tmp_path),
        lambda: build_generator("dcgan", weights=tmp_path),
    ):
        with pytest.raises(SplitinvError, match="is a folder, not a file: pass the file inside it") as err:
            load()
        assert str(tmp_path) in _one_line(err)


def test_files_without_a_checksum_load_and_must_be_finite(tmp_path: Path) -> None:
    """A user's plain state_dict and a checkpoint written before checksums load; inf/NaN values do not."""
    victim = build_victim("resnet10t", image_size=32, num_classes=4)
    torch.save(victim.checkpoint(), tmp_path / "old.ckpt")  # no splitinv checksum inside
    loaded = build_victim("resnet10t", weights=tmp_path / "old.ckpt")
    assert torch.equal(loaded.model.fc.weight, victim.model.fc.weight)
    state = OrderedDict((k, v.clone()) for k, v in victim.model.state_dict().items())
    torch.save(state, tmp_path / "plain.pt")
    build_victim("resnet10t", weights=tmp_path / "plain.pt", num_classes=4)
    state["fc.bias"][1] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(SplitinvError, match=r"1 value\(s\) of tensor fc.bias are inf/NaN") as err:
        build_victim("resnet10t", weights=tmp_path / "nan.pt", num_classes=4)
    assert str(tmp_path / "nan.pt") in _one_line(err)


class _Code:
    def __reduce__(self) -> tuple:
        return (print, ("unpickled",))


def test_garbage_reads_as_corrupt_and_pickled_code_as_unsafe(tmp_path: Path) -> None:
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    for name in ("garbage.pt", "text.pt"):
        with pytest.raises(SplitinvError, match="is corrupt or not a checkpoint") as err:
            load_decoder(tmp_path / name)
        assert "safely" not in _one_line(err)
    torch.save({"state_dict": _Code()}, tmp_path / "code.pt")
    with pytest.raises(SplitinvError, match=r"holds pickled code .* cannot be loaded safely") as err:
        load_decoder(tmp_path / "code.pt")
    assert "is corrupt" not in _one_line(err)


def test_the_command_reports_a_changed_victim_file_in_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tensor, _ = _victim_file(tmp_path / "victim.pt")
    _flip(tmp_path / "victim.pt", tensor)
    cfg = compose(
        [*TINY_RUN, "victim=resnet10t", f"victim.weights={tmp_path / 'victim.pt'}", "cut=layer1"],
        output_dir=tmp_path / "out",
    )
    with pytest.raises(SystemExit) as exit_info:
        run_task("splitinv-run", run, cfg, multirun=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("splitinv-run: error: victim weights file ")
    assert "is corrupt: tensor" in err and (tmp_path / "out" / "failed.json").is_file()


# --------------------------------------------------------------------- checkpoints that do not fit the run


@pytest.fixture
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    def evaluate(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the evaluation ran before the checkpoint was checked")

    monkeypatch.setattr(run_module, "evaluate", evaluate)


@pytest.mark.parametrize(
    ("feature_shape", "image_shape", "message"),
    [
        (
            (64, 8, 8),
            (3, 32, 32),
            r"trained on features of shape \(64, 8, 8\) but the device sends \(128, 4, 4\)",
        ),
        (
            (128, 4, 4),
            (3, 64, 64),
            r"makes images of shape \(3, 64, 64\) but this run's images are \(3, 32, 32\)",
        ),
    ],
    ids=["wrong-cut", "wrong-size"],
)
def test_a_decoder_checkpoint_that_does_not_fit_is_refused_before_any_work(
    tmp_path: Path, no_evaluation: None, feature_shape: tuple, image_shape: tuple, message: str
) -> None:
    attack = DecoderAttack()
    attack.decoder = build_decoder(feature_shape, image_shape, 16)
    attack.save(tmp_path / "decoder.pt")
    cfg = compose(
        [
            *TINY_RUN,
            "victim=resnet18",
            "cut=layer2",
            "attack=decoder",
            f"attack.checkpoint={tmp_path / 'decoder.pt'}",
        ],
        output_dir=tmp_path / "out",
    )
    with pytest.raises(SplitinvError, match=message) as err:
        run(cfg)
    assert "same cut point" in _one_line(err) or "image size" in str(err.value)


@pytest.mark.parametrize("fault", ["truncated", "empty"])
def test_a_broken_decoder_checkpoint_is_one_line_exit_2(
    tmp_path: Path, no_evaluation: None, fault: str, capsys: pytest.CaptureFixture
) -> None:
    tensor, _ = _decoder_file(tmp_path / "decoder.pt")
    FAULTS[fault][0](tmp_path / "decoder.pt", tensor)
    cfg = compose(
        [
            *TINY_RUN,
            "victim=resnet18",
            "cut=layer2",
            "attack=decoder",
            f"attack.checkpoint={tmp_path / 'decoder.pt'}",
        ],
        output_dir=tmp_path / "out",
    )
    with pytest.raises(SystemExit) as exit_info:
        run_task("splitinv-run", run, cfg, multirun=False)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert f"decoder checkpoint file {tmp_path / 'decoder.pt'} is corrupt or not a checkpoint" in err


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            [(3, 32, 32), (64, 8, 8)],
            r"inverts \(64, 8, 8\) features to \(3, 32, 32\) images, but this head gives",
        ),
        (
            [(3, 64, 64), (128, 4, 4)],
            r"to \(3, 64, 64\) images, but this head gives \(128, 4, 4\) from \(3, 32, 32\)",
        ),
    ],
    ids=["wrong-cut", "wrong-size"],
)
def test_a_dci_checkpoint_that_does_not_fit_is_refused_before_any_work(
    tmp_path: Path, no_evaluation: None, shapes: list, message: str
) -> None:
    attack = DCIAttack()
    attack.chain = InverterChain(shapes, width=16)
    attack.save(tmp_path / "dci.pt")
    cfg = compose(
        [
            *TINY_RUN,
            "victim=resnet18",
            "cut=layer2",
            "attack=dci",
            f"attack.checkpoint={tmp_path / 'dci.pt'}",
        ],
        output_dir=tmp_path / "out",
    )
    with pytest.raises(SplitinvError, match=message) as err:
        run(cfg)
    _one_line(err)


def test_decoder_attack_checks_its_checkpoint_against_the_context(tmp_path: Path) -> None:
    """From Python too: the oracle's observations (what the device sends) decide the feature shape."""
    victim = build_victim("resnet10t", image_size=32, num_classes=4)
    the_split = split(victim, "layer1")
    with torch.no_grad():
        shape = tuple(the_split.observe(torch.zeros(1, 3, 32, 32)).shape[1:])
    attack = DecoderAttack()
    attack.decoder = build_decoder(shape, (3, 32, 32), 16)
    attack.save(tmp_path / "decoder.pt")
    context = AttackContext.for_attack(DecoderAttack(), the_split, (3, 32, 32))
    assert DecoderAttack(checkpoint=str(tmp_path / "decoder.pt")).fit(context) == {}
    deeper = AttackContext.for_attack(DecoderAttack(), split(victim, "layer2"), (3, 32, 32))
    with pytest.raises(SplitinvError, match="same cut point") as err:
        DecoderAttack(checkpoint=str(tmp_path / "decoder.pt")).fit(deeper)
    _one_line(err)


# -------------------------------------------------------------------------------------------------- images


def _folder(root: Path, n: int = 6, size: int = 24) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def _image_of(dm: ImageFolderDataModule, name: str) -> torch.Tensor:
    """The evaluation or auxiliary image decoded from file ``name`` (the evaluation transform)."""
    dataset = dm.eval_dataset()
    ids = [i for i in range(len(dm.samples)) if Path(dm.samples[i][0]).name == name]
    assert ids, f"{name} was not read"
    sample = ids[0]
    if sample in dm.eval_ids:
        return dataset[dm.eval_ids.index(sample)][0]
    from splitinv.data.imagefolder import _FileImages

    return _FileImages(dm.samples, np.array([sample]), dataset.transform, dm.channels)[0][0]


def test_a_16_bit_png_is_scaled_not_white(tmp_path: Path) -> None:
    _folder(tmp_path, n=3)
    ramp = np.tile(np.linspace(0, 65535, 32), (32, 1)).astype(np.uint16)  # dark left, bright right
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    Image.fromarray(np.rint(ramp / 257).astype(np.uint8)).save(tmp_path / "flat.png")  # the same, 8 bit
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert np.asarray(Image.open(tmp_path / "deep.png").convert("RGB")).mean() > 245  # PIL alone: white
    dm = ImageFolderDataModule(root=tmp_path, image_size=32, n_eval=1)
    dm.setup()
    deep, flat = _image_of(dm, "deep.png"), _image_of(dm, "flat.png")
    assert (deep - flat).abs().max() <= 1.5 / 255
    assert deep[:, :, :4].mean() < 0.15 and deep[:, :, -4:].mean() > 0.85 and torch.equal(deep[0], deep[2])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    _folder(tmp_path, n=3)
    pixels = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; left half white
    pixels[:, :20] = 255
    raw = Image.fromarray(pixels)
    exif = raw.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": upright it is 20 wide, 40 high, top half white
    raw.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    from splitinv.data.base import read_image

    upright = np.asarray(read_image(tmp_path / "rotated.jpg")).astype(float)
    assert upright.shape == (40, 20, 3)
    assert upright[:18].mean() > 240 and upright[22:].mean() < 15


def test_gif_and_palette_and_transparent_images_are_read(tmp_path: Path) -> None:
    _folder(tmp_path, n=3)
    frames = [Image.new("RGB", (24, 24), (200, 40, 40)), Image.new("RGB", (24, 24), (40, 200, 40))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., 2], rgba[:12, :, 3] = 255, 255  # blue, top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    dm = ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=1)
    dm.setup()
    names = {Path(p).name for p, _ in dm.samples}
    assert {"anim.gif", "alpha.png"} <= names
    gif = _image_of(dm, "anim.gif")
    assert torch.allclose(gif.mean((1, 2)), torch.tensor([200, 40, 40]) / 255, atol=0.03)  # the first frame
    alpha = _image_of(dm, "alpha.png")
    assert alpha[:, 2, :].mean((1,)).tolist() == pytest.approx([0, 0, 1], abs=0.02)  # blue on top
    assert alpha[:, -2, :].mean((1,)).tolist() == pytest.approx([1, 1, 1], abs=0.02)  # white below


@pytest.mark.parametrize(
    ("content", "what"),
    [(None, "truncated"), (b"", "empty"), (b"<html>not an image</html>", "not an image")],
    ids=["truncated", "empty", "html"],
)
def test_a_bad_evaluation_image_is_named_at_setup(tmp_path: Path, content: bytes | None, what: str) -> None:
    _folder(tmp_path, n=5)
    good = ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=2)
    good.setup()
    bad = Path(good.samples[good.eval_ids[0]][0])  # an evaluation image, replaced by a broken JPEG
    bad.unlink()
    bad = bad.with_suffix(".jpg")
    if content is None:
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad)
        content = bad.read_bytes()[:-400]
    bad.write_bytes(content)
    dm = ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=2)
    with pytest.raises(
        SplitinvError, match=r"cannot read image .*: it is corrupt, truncated, empty or not an"
    ) as err:
        dm.setup()  # before any batch, any training
    assert str(bad) in _one_line(err)


def test_a_broken_auxiliary_image_is_one_line_naming_it(tmp_path: Path) -> None:
    _folder(tmp_path, n=5)
    probe = ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=1)
    probe.setup()
    aux = Path(probe.samples[probe.aux_ids[0]][0])
    aux.write_bytes(b"")  # empty: refused at setup
    with pytest.raises(SplitinvError, match="cannot read image") as err:
        ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=1).setup()
    assert str(aux) in _one_line(err)
    data = (tmp_path / "0.png").read_bytes() if aux.name != "0.png" else (tmp_path / "1.png").read_bytes()
    aux.write_bytes(data[: len(data) // 2])  # truncated: its header reads, its pixels do not
    dm = ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=1)
    dm.setup()
    with pytest.raises(SplitinvError, match="cannot read image") as err:
        dm.aux_dataset()[dm.aux_ids.index(probe.aux_ids[0])]
    assert str(aux) in _one_line(err)


def test_skipped_files_and_upscaled_images_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _folder(tmp_path, n=4, size=8)  # 8 px images for a 16 px victim (resized to 18 px)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "logo.svg").write_text("<svg/>")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING, logger="splitinv.data.imagefolder"):
        ImageFolderDataModule(root=tmp_path, image_size=16, n_eval=2).setup()
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1, warnings_
    assert "skipped 2 file(s) that are not images" in warnings_[0] and "logo.svg, notes.txt" in warnings_[0]
    assert ".DS_Store" not in warnings_[0]
    assert (
        "2 of 2 evaluation images are smaller than 18 px on their shorter side and are upscaled"
        in warnings_[0]
    )


def test_a_float_image_is_refused_in_one_line(tmp_path: Path) -> None:
    from splitinv.data.base import read_image

    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(SplitinvError, match="32-bit float image") as err:
        read_image(tmp_path / "float.tif")
    _one_line(err)


# --------------------------------------------------------------------------------------- sizes and cutting


def test_timm_models_get_the_image_size_their_constructor_takes() -> None:
    """pvt_v2 takes no img_size (it used to be a TypeError); convit takes one (it used to be ignored)."""
    pvt = build_victim("pvt_v2_b0", image_size=64, num_classes=4)
    with torch.no_grad():
        assert pvt(torch.rand(1, 3, 64, 64)).shape == (1, 4) and pvt.image_size == 64
    convit = build_victim("convit_tiny", image_size=64, num_classes=4)
    assert convit.model.pos_embed.shape[1] == (64 // 16) ** 2  # built for 64 px, not 224 (196 patches)
    with torch.no_grad():
        assert convit(torch.rand(1, 3, 64, 64)).shape == (1, 4)


def test_auto_cuts_pit_with_hooks_where_fx_loses_the_blocks() -> None:
    victim = build_victim("pit_ti_224", image_size=64, num_classes=4)
    fx_points = cut_points(victim, method="fx")
    points = cut_points(victim)
    assert "transformers.1.blocks.2" not in fx_points and "transformers.1.blocks.2" in points
    assert len(points) > 2 * len(fx_points)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    head, tail = cut(victim, "transformers.1.blocks.2")
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), victim(x))


def test_the_run_takes_cut_method(tmp_path: Path) -> None:
    """cut_method reaches the cut: forward hooks list module outputs only (resnet's flatten is FX's)."""
    victim = build_victim("resnet18", image_size=32, num_classes=4)
    assert "flatten" in cut_points(victim) and "flatten" not in cut_points(victim, method="hooks")
    cfg = compose([*TINY_RUN, "victim=resnet18", "cut=flatten", "cut_method=hooks"], output_dir=tmp_path)
    with pytest.raises(SplitinvError, match="has no cut point 'flatten'") as err:
        run(cfg)
    _one_line(err)
    cfg = compose([*TINY_RUN, "victim=resnet18", "cut=layer1", "cut_method=sideways"], output_dir=tmp_path)
    with pytest.raises(SplitinvError, match="unknown cut method 'sideways'"):
        run(cfg)


class _TinyOutput(nn.Module):
    """Logits of about 1e-14, with the input skipping around ``a`` and ``b``: only ``c`` is a valid cut."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.b(self.a(x)) + x
        return self.c(g).mean((2, 3)) * 1e-14


def test_hook_validity_is_relative_to_the_output_scale() -> None:
    model = _TinyOutput().eval()
    assert cut_points(model, method="hooks") == ["c"]
    with pytest.raises(SplitinvError, match="other values crossing it") as err:
        cut(model, "a", method="hooks")
    _one_line(err)
    x = torch.rand(2, 3, 8, 8)
    head, tail = cut(model, "c", method="hooks")
    with torch.no_grad():
        assert torch.allclose(tail(head(x)), model(x), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------- tables, figures


def _sweep_job(root: Path, name: str, cut: str, depth: float, ssim: float) -> Path:
    from splitinv.results import RESULTS_FORMAT, write_digest

    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"victim: {{name: resnet18}}\ncut: {cut}\nseed: 0\n")
    record = {
        "format": RESULTS_FORMAT,
        "status": "ok",
        "ssim": {"mean": ssim, "std": 0.01, "n": 4},
        "victim": "resnet18",
        "cut": cut,
        "attack": "decoder",
        "seed": 0,
        "details": {"cut": {"index": int(depth * 10), "relative_depth": depth}},
    }
    (job / "metrics.json").write_text(json.dumps(record))
    write_digest(job / "metrics.json")  # as splitinv writes it
    gen = torch.Generator().manual_seed(int(depth * 10))
    save_images(
        job / "images.pt", torch.rand(2, 3, 8, 8, generator=gen), torch.rand(2, 3, 8, 8, generator=gen)
    )
    return job


def test_table_and_plot_show_a_truncated_job_and_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    from splitinv import cli
    from splitinv.report import collect

    sweep = tmp_path / "sweep"
    _sweep_job(sweep, "0", "layer1", 0.2, 0.7)
    broken = _sweep_job(sweep, "1", "layer2", 0.4, 0.6)
    broken_images = _sweep_job(sweep, "2", "layer3", 0.6, 0.5)
    _truncate(broken / "metrics.json")
    _truncate(broken_images / "images.pt")
    with caplog.at_level(logging.WARNING, logger="splitinv.report"):
        frame = collect(sweep)
        cli.main(["table", str(sweep), "--metrics", "ssim"])
    rows = frame.set_index("job")
    assert rows.loc["1", "status"] == "broken" and rows.loc["1", "cut"] == "layer2"
    assert str(broken / "metrics.json") in rows.loc["1", "error"] and rows.loc["0", "status"] == "ok"
    out = capsys.readouterr().out
    assert "| layer1 |" in out and "broken" in out
    assert str(broken / "metrics.json") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="splitinv.report"):
        cli.main(["plot", str(sweep), "-o", str(tmp_path / "figures")])
    assert str(broken_images / "images.pt") in caplog.text and "left out of the figure" in caplog.text
    assert list((tmp_path / "figures").glob("reconstructions_*.png"))
