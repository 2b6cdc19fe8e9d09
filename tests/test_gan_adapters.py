"""Generator adapters (ProGAN, BigGAN-deep, DCGAN): each cut reproduces the native network; strict weights."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from splitinv.errors import SplitinvError
from splitinv.gans import Generator, build_generator
from splitinv.gans.progan import ProGANGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

PROGAN_WIDTHS = [24, 16, 16, 8, 8, 4]  # latent, 4x4 .. 64x64
PROGAN_POINTS = ["latent", *(f"layer{k}" for k in range(1, 11)), "output_64x64"]
BIGGAN_POINTS = ["latent", "gen_z", *(f"layers.{i}" for i in range(11)), "bn", "output"]  # 10 blocks + attn
DCGAN_POINTS = ["latent", "block1", "block2", "block3", "output"]
BIGGAN_TRUNCATION, BIGGAN_CLASS = 0.55, 3  # not the defaults, so that ignoring them shows


@dataclass
class Case:
    """A generator, latents per space and the native network's images for them (in [0, 1])."""

    gen: Generator
    latents: dict[str, Tensor]
    expected: Tensor
    shapes: dict[str, dict[str, tuple[int, ...]]]


def _case(gen: Generator, latents: dict[str, Tensor], expected: Tensor) -> Case:
    assert expected.std() > 1e-3, "native output is constant: the comparison would prove nothing"
    return Case(gen, latents, expected, {c.name: c.state for c in gen.describe_cut_points()})


def _progan_reference(state: dict[str, Tensor], z: Tensor) -> Tensor:
    """ProGAN's forward written out from the paper: PixelNorm, [upsample], He-scaled conv + bias, lrelu."""

    def pixel_norm(x: Tensor) -> Tensor:
        return x / torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)

    n = sum(1 for k in state if k.startswith("layer") and k.endswith(".conv.weight"))
    x = z[:, :, None, None]
    for k in range(1, n + 1):
        w, b = state[f"layer{k}.conv.weight"], state[f"layer{k}.wscale.b"]
        x = pixel_norm(x)
        if k >= 3 and k % 2 == 1:
            x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        x = F.conv2d(x, w, padding=3 if k == 1 else 1) * math.sqrt(2 / fan_in) + b.view(1, -1, 1, 1)
        x = F.leaky_relu(x, 0.2)
    res = 4 * 2 ** ((n - 2) // 2)
    w, b = state[f"output_{res}x{res}.conv.weight"], state[f"output_{res}x{res}.wscale.b"]
    x = F.conv2d(pixel_norm(x), w) / math.sqrt(w.shape[1]) + b.view(1, -1, 1, 1)
    return x.clamp(-1, 1)


@pytest.fixture(scope="module")
def progan_case() -> Case:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM"):
        gen = build_generator("progan", None, widths=PROGAN_WIDTHS)
    with torch.no_grad():  # non-zero biases, so that a dropped bias shows
        for name, p in gen.net.named_parameters():
            if name.endswith(".b"):
                p.normal_(0, 0.2)
    z = torch.randn(2, PROGAN_WIDTHS[0])
    with torch.no_grad():
        raw = gen.net(z)  # the native nn.Sequential on the 1x1 latent
        net64 = copy.deepcopy(gen.net).double()  # in float64, to compare with the paper's formulas tightly
        paper = _progan_reference(net64.state_dict(), z.double())
        torch.testing.assert_close(net64(z.double()), paper, atol=1e-10, rtol=0)
    return _case(gen, {"z": z}, (raw + 1) / 2)


@pytest.fixture(scope="module")
def biggan_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A small random BigGAN-deep (128 px, channel width 4) saved as pytorch_model.bin + config.json."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    torch.manual_seed(1)
    config = BigGANConfig(output_dim=128, channel_width=4)
    model = BigGAN(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "gamma" in name else 0.3))
        for name, buf in model.named_buffers():
            if name.endswith("running_means"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif name.endswith("running_vars"):
                buf.copy_(torch.rand_like(buf) + 0.5)
        model.train()  # spectral norms: a few power iterations settle u and v
        for _ in range(3):
            model(torch.randn(2, 128), torch.eye(1000)[:2], 1.0)
    model.eval()
    folder = tmp_path_factory.mktemp("biggan")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(config.to_json_string())
    return folder, model


@pytest.fixture(scope="module")
def biggan_case(biggan_files: tuple[Path, torch.nn.Module]) -> Case:
    folder, model = biggan_files
    gen = build_generator("biggan", folder, truncation=BIGGAN_TRUNCATION, class_index=BIGGAN_CLASS)
    z = 0.5 * torch.randn(2, 128, generator=torch.Generator().manual_seed(2))
    one_hot = torch.zeros(2, 1000)
    one_hot[:, BIGGAN_CLASS] = 1
    with torch.no_grad():
        cond = torch.cat((z, model.embeddings(one_hot)), dim=1)
        expected = (model(z, one_hot, BIGGAN_TRUNCATION) + 1) / 2
    return _case(gen, {"z": z, "cond": cond}, expected)


@pytest.fixture(scope="module")
def dcgan_case() -> Case:
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="RANDOM"):
        gen = build_generator("dcgan", None, image_size=32, nz=16, ngf=8)
    z = torch.randn(2, 16)
    with torch.no_grad():
        expected = (gen.net(z[:, :, None, None]) + 1) / 2
    return _case(gen, {"z": z}, expected)


CASES = [
    *(("progan", "z", p) for p in PROGAN_POINTS),
    *(("biggan", space, p) for space in ("z", "cond") for p in BIGGAN_POINTS),
    *(("dcgan", "z", p) for p in DCGAN_POINTS),
]


@pytest.mark.parametrize(("name", "space", "point"), CASES)
def test_cut_reproduces_native_forward(
    request: pytest.FixtureRequest, name: str, space: str, point: str
) -> None:
    case: Case = request.getfixturevalue(f"{name}_case")
    with torch.no_grad():
        state = case.gen.head(case.latents[space], point, space=space)
        image = case.gen.tail(state, point)
    torch.testing.assert_close(image, case.expected, atol=1e-5, rtol=0)
    assert {k: tuple(v.shape[1:]) for k, v in state.items()} == case.shapes[point]
    assert all(v.shape[0] == 2 for v in state.values())


@pytest.mark.parametrize(
    ("name", "points"), [("progan", PROGAN_POINTS), ("biggan", BIGGAN_POINTS), ("dcgan", DCGAN_POINTS)]
)
def test_cut_point_names(request: pytest.FixtureRequest, name: str, points: list[str]) -> None:
    case: Case = request.getfixturevalue(f"{name}_case")
    assert case.gen.cut_points() == points
    assert list(case.shapes) == points
    with torch.no_grad():
        torch.testing.assert_close(case.gen(case.latents["z"]), case.expected, atol=1e-5, rtol=0)


def test_progan_shapes_and_biggan_states(progan_case: Case, biggan_case: Case) -> None:
    assert progan_case.shapes["latent"] == {"h": (24, 1, 1)}
    assert progan_case.shapes["layer1"] == {"h": (16, 4, 4)}
    assert progan_case.shapes["layer3"] == {"h": (16, 8, 8)}
    assert progan_case.shapes["layer10"] == {"h": (4, 64, 64)}
    assert progan_case.shapes["output_64x64"] == {"h": (3, 64, 64)}
    assert biggan_case.shapes["latent"] == {"h": (256,)}
    assert biggan_case.shapes["gen_z"] == {"h": (64, 4, 4), "cond": (256,)}
    assert biggan_case.shapes["layers.10"] == {"h": (4, 128, 128), "cond": (256,)}
    assert biggan_case.shapes["output"] == {"h": (3, 128, 128), "cond": (256,)}
    assert biggan_case.gen.image_size == 128 and progan_case.gen.image_size == 64


def test_progan_256_layout() -> None:
    """The published LSUN 256 px layout: parameter names, shapes and equalised-lr scales."""
    with torch.device("meta"):
        gen = ProGANGenerator(resolution=256)
    assert gen.cut_points() == ["latent", *(f"layer{k}" for k in range(1, 15)), "output_256x256"]
    depth = {1: 512, 2: 512, 3: 512, 4: 512, 5: 512, 6: 512, 7: 256, 8: 256}
    depth |= {9: 128, 10: 128, 11: 64, 12: 64, 13: 32, 14: 32}
    expected = {}
    for k in range(1, 15):
        c_in = 512 if k <= 2 else depth[k - 1]
        expected[f"layer{k}.conv.weight"] = (depth[k], c_in, 4 if k == 1 else 3, 4 if k == 1 else 3)
        expected[f"layer{k}.wscale.b"] = (depth[k],)
    expected |= {"output_256x256.conv.weight": (3, 32, 1, 1), "output_256x256.wscale.b": (3,)}
    assert {k: tuple(v.shape) for k, v in gen.net.state_dict().items()} == expected
    assert gen.net.layer1.wscale.scale == pytest.approx(math.sqrt(2) / 4 / math.sqrt(512))
    assert gen.net.layer2.wscale.scale == pytest.approx(math.sqrt(2) / 3 / math.sqrt(512))
    assert gen.net.output_256x256.wscale.scale == pytest.approx(1 / math.sqrt(32))
    assert gen.latent_shape() == (512,)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "old_names"])
def test_progan_weights_roundtrip(progan_case: Case, tmp_path: Path, wrap: str) -> None:
    state = progan_case.gen.net.state_dict()
    if wrap == "state_dict":
        state = {"state_dict": state}
    elif wrap == "old_names":  # the older features.K / output naming
        state = {
            (f"features.{int(k.split('.')[0][5:]) - 1}." if k.startswith("layer") else "output.")
            + k.split(".", 1)[1]: v
            for k, v in state.items()
        }
    torch.save(state, tmp_path / "progan.pth")
    gen = build_generator("progan", tmp_path / "progan.pth")
    assert (
        gen.image_size == 64
        and gen.net.widths == PROGAN_WIDTHS
        and gen.weights == str(tmp_path / "progan.pth")
    )
    z = progan_case.latents["z"]
    with torch.no_grad():
        assert torch.equal(gen(z), progan_case.gen(z))


def _one_line_error(match: str, fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    with pytest.raises(SplitinvError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_progan_bad_weights(progan_case: Case, tmp_path: Path) -> None:
    state = progan_case.gen.net.state_dict()
    bad = {("layer4.wscale.bias" if k == "layer4.wscale.b" else k): v for k, v in state.items()}
    torch.save(bad, tmp_path / "bad.pth")
    msg = _one_line_error("do not fit ProGAN", build_generator, "progan", tmp_path / "bad.pth")
    assert "missing 1, unexpected 1" in msg
    torch.save({k: v for k, v in state.items() if not k.startswith("output")}, tmp_path / "no_out.pth")
    _one_line_error("output_RxR", build_generator, "progan", tmp_path / "no_out.pth")
    torch.save(state, tmp_path / "good.pth")
    _one_line_error(
        "64 px images, not resolution=128", build_generator, "progan", tmp_path / "good.pth", resolution=128
    )
    _one_line_error("power of two", build_generator, "progan", None, resolution=48)
    _one_line_error(
        "make 32 px images", build_generator, "progan", None, resolution=64, widths=[8, 8, 8, 8, 8]
    )


def test_biggan_missing_key_is_one_line_error(
    biggan_files: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    folder, _ = biggan_files
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["generator.layers.3.conv_1.weight_v"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    msg = _one_line_error("do not fit BigGAN-deep", build_generator, "biggan", tmp_path)
    assert "missing 1, unexpected 0" in msg and "generator.layers.3.conv_1.weight_v" in msg
    (tmp_path / "config.json").unlink()
    _one_line_error("lacks config.json", build_generator, "biggan", tmp_path)


def test_biggan_settings(biggan_files: tuple[Path, torch.nn.Module], biggan_case: Case) -> None:
    folder, _ = biggan_files
    gen = build_generator("biggan", folder)
    assert (gen.truncation, gen.class_index, gen.latent_spaces) == (0.4, 207, ("z", "cond"))
    assert gen.describe()["truncation"] == 0.4 and gen.weights == str(folder)
    z = biggan_case.latents["z"]
    with torch.no_grad():  # the class and the truncation change the image
        assert (gen(z) - biggan_case.expected).abs().max() > 1e-3
    gen.class_index = BIGGAN_CLASS
    with torch.no_grad():
        assert (gen(z) - biggan_case.expected).abs().max() > 1e-3
    gen.truncation = BIGGAN_TRUNCATION
    with torch.no_grad():
        torch.testing.assert_close(gen(z), biggan_case.expected, atol=1e-5, rtol=0)
    gen.train()  # spectral norms must not run power iterations: the model stays in eval mode
    assert gen.training and not gen.model.training
    with torch.no_grad():
        torch.testing.assert_close(gen(z), biggan_case.expected, atol=1e-5, rtol=0)
    for kwargs, match in [
        ({"truncation": 0.0}, "truncation must be"),
        ({"truncation": 1.5}, "truncation must be"),
        ({"class_index": 1000}, "class_index must be"),
    ]:
        _one_line_error(match, build_generator, "biggan", folder, **kwargs)
    _one_line_error("config is for random", build_generator, "biggan", folder, config={"channel_width": 4})


def test_biggan_sample_latent(biggan_case: Case) -> None:
    gen = biggan_case.gen
    z = gen.sample_latent(64, generator=torch.Generator().manual_seed(0))
    again = gen.sample_latent(64, generator=torch.Generator().manual_seed(0))
    assert z.shape == (64, 128) and torch.equal(z, again)
    t = BIGGAN_TRUNCATION
    assert z.abs().max() <= 2 * t + 1e-6
    assert z.std().item() == pytest.approx(0.8796 * t, rel=0.05)  # std of N(0, 1) truncated to [-2, 2]
    cond = gen.sample_latent(64, "cond", generator=torch.Generator().manual_seed(0))
    assert cond.shape == (64, 256) and not cond.requires_grad
    assert torch.equal(cond[:, :128], z)
    torch.testing.assert_close(cond, gen.enter(z)["h"].detach())


def test_biggan_random_build() -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        gen = build_generator("biggan", None, config={"channel_width": 4, "output_dim": 128})
    with torch.no_grad():
        image = gen(gen.sample_latent(1))
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all()


def test_biggan_package_missing_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_pretrained_biggan", None)  # import fails as if not installed
    _one_line_error(r'pip install "splitinv\[biggan\]"', build_generator, "biggan", None)


def test_import_does_not_load_biggan_package() -> None:
    code = (
        "import sys, splitinv, splitinv.gans\n"
        "assert {'biggan', 'progan', 'dcgan'} <= set(splitinv.gans.available_generators())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_pretrained_biggan', 'boto3')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["progan", "biggan", "dcgan"])
def test_unknown_cut_point_and_space(request: pytest.FixtureRequest, name: str) -> None:
    case: Case = request.getfixturevalue(f"{name}_case")
    z = case.latents["z"]
    point = case.gen.cut_points()[2]
    _one_line_error("is not a cut point", case.gen.head, z, "layer_99")
    _one_line_error("is not a cut point", case.gen.tail, {"h": z}, "nope")
    _one_line_error("has no latent space 'w'", case.gen.head, z, point, space="w")
    _one_line_error("latents are", case.gen.head, z[:, :-1], point)
    if name != "biggan":
        _one_line_error("has no latent space 'cond'", case.gen.head, z, point, space="cond")
    else:
        _one_line_error("cond latents are", case.gen.head, z, point, space="cond")
