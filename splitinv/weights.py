"""Pretrained weights brought from another machine (``splitinv weights import``) and what is cached
(``splitinv doctor``).

torchvision's weight files carry the start of their SHA-256 in their name (``alexnet-owt-7be5be79.pth``):
a file is recognised by that name or, renamed, by its content's hash, checked against the name torchvision
publishes, and copied to ``$TORCH_HOME/hub/checkpoints`` (where torchvision and LPIPS read it). A timm
checkpoint is named by its model (``--timm resnet50.a1_in1k``): it must load into that architecture key for
key and shape (and match ``--sha256`` where given, the checksum on its Hugging Face page), and is copied into
the Hugging Face cache as that model's repository, where timm's ``pretrained=True`` finds it offline.
Every copy is written to a temporary file in the target folder and renamed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from splitinv.errors import SplitinvError

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's HASH_REGEX, at least 6 hex digits
LPIPS_FILES = {"alexnet-owt-7be5be79.pth": "alex", "vgg16-397923af.pth": "vgg"}  # metrics.LPIPS_NETS' files


@dataclass(frozen=True)
class Imported:
    """One imported file: where it went, what it is, and whether it was already there."""

    source: Path
    target: Path
    what: str
    sha256: str
    unchanged: bool = False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torch_checkpoint_dir() -> Path:
    """Where torchvision (and LPIPS' backbones) look for weights: ``torch.hub.get_dir()/checkpoints``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


@lru_cache(maxsize=1)
def torchvision_files() -> dict[str, str]:
    """Every weight file torchvision publishes: file name -> ``model (WeightsEnum.MEMBER)``."""
    import torchvision.models as tvm

    files: dict[str, str] = {}
    for model in tvm.list_models():
        try:
            enum = tvm.get_model_weights(model)
        except (ValueError, KeyError):  # a builder without published weights
            continue
        for member in enum:
            files.setdefault(os.path.basename(member.url), f"{model} ({enum.__name__}.{member.name})")
    return files


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _place(source: Path, target: Path, what: str, digest: str) -> Imported:
    if target.is_file() and target.stat().st_size == source.stat().st_size and sha256_of(target) == digest:
        return Imported(source, target, what, digest, unchanged=True)
    _copy_atomic(source, target)  # a damaged file already there is replaced by the verified one
    return Imported(source, target, what, digest)


def _check_file(path: Path) -> Path:
    if path.is_dir():
        raise SplitinvError(
            f"{path} is a folder: give the weight files themselves (splitinv weights import F...)"
        )
    if not path.is_file():
        raise SplitinvError(
            f"{path} does not exist: give the path of a weights file you copied to this machine"
        )
    return path


def resolve_torchvision(path: str | os.PathLike) -> tuple[Path, Path, str, str]:
    """Which of torchvision's published weight files ``path`` is, checked by SHA-256 against the prefix in
    its published name (a renamed file is recognised by its hash): (source, target, what, sha256)."""
    path = _check_file(Path(path))
    digest = sha256_of(path)
    files = torchvision_files()
    name = path.name
    if name in files:
        prefix = _HASH_IN_NAME.search(name).group(1)  # type: ignore[union-attr]  # every published name has one
        if not digest.startswith(prefix):
            raise SplitinvError(
                f"{path}: checksum mismatch: its SHA-256 starts with {digest[: len(prefix)]}, torchvision "
                f"publishes {name} with {prefix}: the file is damaged or another one; copy it again"
            )
    else:
        matches = [f for f in files if (m := _HASH_IN_NAME.search(f)) and digest.startswith(m.group(1))]
        if not matches:
            raise SplitinvError(
                f"{path} is none of torchvision's published weight files (neither its name nor its checksum "
                f"{digest[:8]}... matches one); for a timm checkpoint give its model: --timm MODEL"
            )
        name = matches[0]
    what = files[name] + (f", the LPIPS-{LPIPS_FILES[name]} backbone" if name in LPIPS_FILES else "")
    return path, torch_checkpoint_dir() / name, what, digest


def _load_state(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SplitinvError(
            f"{path} is not a readable checkpoint ({type(err).__name__}): copy it again"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SplitinvError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def import_timm(path: str | os.PathLike, model: str, sha256: str | None = None) -> Imported:
    """Copy a timm checkpoint into the Hugging Face cache as ``model``'s repository (``timm/<model>``), after
    checking that it loads into that architecture (every key and shape) and, given, its SHA-256."""
    import timm

    path = _check_file(Path(path))
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256.strip().lower():
        raise SplitinvError(
            f"{path}: checksum mismatch: its SHA-256 is {digest}, not the {sha256} given: the file is "
            "damaged or another one; copy it again"
        )
    if not timm.is_model(model):
        raise SplitinvError(f"unknown timm model {model!r}; list them with `splitinv victims --timm`")
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None or not cfg.hf_hub_id:
        raise SplitinvError(
            f"timm model {model!r} has no pretrained weights on the Hugging Face hub; name a pretrained tag, "
            "e.g. resnet50.a1_in1k (`splitinv victims --timm --filter 'resnet50*'`)"
        )
    state = _load_state(path)
    net = timm.create_model(model, pretrained=False)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise SplitinvError(
            f"{path} does not fit timm's {model}: {len(missing)} keys missing (e.g. {missing[:2]}), "
            f"{len(extra)} unexpected (e.g. {extra[:2]}), {len(shapes)} of another shape "
            f"(e.g. {shapes[:2]}); is it that model's checkpoint?"
        )
    from huggingface_hub import constants

    repo = cfg.hf_hub_id.split("@")[0]
    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    revision = digest[:40]  # a local snapshot name; huggingface_hub reads it through refs/main offline
    filename = "model.safetensors" if path.suffix == ".safetensors" else "pytorch_model.bin"
    imported = _place(path, folder / "snapshots" / revision / filename, f"timm {model} ({repo})", digest)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    ref = folder / "refs" / "main"
    fd, tmp = tempfile.mkstemp(dir=ref.parent, prefix=".main-")
    with os.fdopen(fd, "w") as f:
        f.write(revision)
    os.replace(tmp, ref)
    return imported


def import_weights(
    paths: list[str], timm_model: str | None = None, sha256: str | None = None
) -> list[Imported]:
    """``splitinv weights import``: every file checked before any is copied; one line per problem."""
    if timm_model is not None:
        if len(paths) != 1:
            raise SplitinvError(f"--timm names one model: import its one checkpoint, not {len(paths)} files")
        return [import_timm(paths[0], timm_model, sha256)]
    if sha256 is not None:
        raise SplitinvError("--sha256 is for --timm checkpoints; torchvision's files carry their checksum")
    resolved = [resolve_torchvision(p) for p in paths]  # every file checked before any is copied
    return [_place(*r) for r in resolved]
