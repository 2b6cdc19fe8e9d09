"""Victim classifiers: torchvision and timm models by name, and your own network, with their weights and
their input normalisation.

A :class:`Victim` takes images in [0, 1]; the mean/std normalisation its weights expect is a module inside it,
so attacks and metrics never see normalised pixels. :func:`build_victim` builds one by name;
:func:`wrap_module` makes one of any ``nn.Module`` (:func:`build_custom_victim`, behind ``victim=custom``,
from a ``"package.module:function"`` that returns it), checking first that a run can use it.

timm and torchvision are imported where they are used, so importing this module costs only torch.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import urllib.error
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitinv.errors import SplitinvError
from splitinv.imports import timm_without_wandb
from splitinv.io import load_weights
from splitinv.registry import Registry, import_target

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "splitinv-victim/1"
# what build_victim reads from a splitinv victim checkpoint
CHECKPOINT_KEYS = ("name", "state_dict", "num_classes", "image_size", "mean", "std")
OWN_WEIGHTS = "own"  # what a wrapped module's weights are recorded as when no weights file is given
# the constructor argument that sizes a model for its input, per library (position embeddings depend on it)
_SIZE_KEYS = {"torchvision": "image_size", "timm": "img_size"}


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std as buffers so they follow the module's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Victim(nn.Module):
    """A classifier on [0, 1] images: ``model(normalize(x))``.

    Attributes describe where it came from, for results files: ``name``, ``family`` (torchvision or timm),
    ``weights`` (``imagenet``, a file path, or ``random``), ``image_size`` and ``num_classes``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        family: str,
        weights: str,
        image_size: int,
        num_classes: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model
        self.name, self.family, self.weights = name, family, weights
        self.image_size, self.num_classes = image_size, num_classes
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity of the victim, for results files."""
        return {
            "name": self.name,
            "family": self.family,
            "weights": self.weights,
            "pretrained": self.weights != "random",
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def checkpoint(self) -> dict[str, Any]:
        """The dict that :func:`build_victim` accepts back as ``weights=path`` (after torch.save)."""
        meta = self.describe()
        return {"format": CHECKPOINT_FORMAT, **meta, "state_dict": self.model.state_dict()}


def is_random_weights(weights: Any) -> bool:
    """Whether a ``weights`` value asks for random initialisation (None, "", "none", "null", "random")."""
    return weights is None or str(weights).lower() in ("", "none", "null", "random")


# Victims that are neither torchvision nor timm models: name -> builder taking (weights, num_classes,
# image_size, **kwargs) and returning a Victim. Built-ins are lazy entries (registering imports nothing).
VICTIMS: Registry[Callable[..., Victim]] = Registry(
    "victim", "register your own with splitinv.victims.register_victim, or wrap it with wrap_module."
)
VICTIMS.register("dcgan_discriminator", "splitinv.gans.dcgan:build_dcgan_discriminator")
VICTIMS.register("he2019_mnist", "splitinv.nets.he2019:build_he2019_mnist")
VICTIMS.register("he2019_cifar", "splitinv.nets.he2019:build_he2019_cifar")


def register_victim(name: str) -> Callable[[Callable[..., Victim]], Callable[..., Victim]]:
    """Decorator adding a victim builder under ``name`` (for networks outside torchvision and timm)."""
    return VICTIMS.register(name)


def torchvision_names() -> list[str]:
    """Classification models that torchvision can build by name."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_victims() -> list[str]:
    """Every name :func:`build_victim` accepts (torchvision's classifiers, timm's models, registered ones)."""
    timm = timm_without_wandb()
    return sorted(set(torchvision_names()) | set(timm.list_models()) | set(VICTIMS.names()))


def _resolve_family(name: str) -> tuple[str, str]:
    """``resnet18`` -> (torchvision, resnet18); ``timm/resnet18`` or a timm-only name -> (timm, name).

    timm is imported only when the name is not torchvision's: its import costs about 1.5 CPU-s, a tenth of
    a small job."""
    if name.startswith(("timm/", "timm:")):
        family, name = "timm", name[5:]
    elif name.startswith(("torchvision/", "tv/")):
        family, name = "torchvision", name.split("/", 1)[1]
    elif name in torchvision_names():
        return "torchvision", name
    elif timm_without_wandb().is_model(name):
        family = "timm"
    else:
        close = difflib.get_close_matches(name, available_victims(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SplitinvError(
            f"unknown victim {name!r}: not a torchvision classifier nor a timm model.{hint} "
            "List them with `splitinv victims`."
        )
    if family == "torchvision" and name not in torchvision_names():
        raise SplitinvError(f"unknown torchvision classifier {name!r}; list them with `splitinv victims`.")
    if family == "timm" and not timm_without_wandb().is_model(name):
        raise SplitinvError(f"unknown timm model {name!r}; list them with `splitinv victims --timm`.")
    return family, name


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _construct(build: Callable[..., nn.Module], kwargs: dict, added: str | None) -> nn.Module:
    """``build(**kwargs)``; where ``added`` (the size argument that :func:`_size_kwargs` added) is refused
    by the constructor (a convolutional model that takes any size), ``build`` without it."""
    try:
        return build(**kwargs)
    except TypeError as err:
        if added is None or f"unexpected keyword argument '{added}'" not in str(err):
            raise
    return build(**{k: v for k, v in kwargs.items() if k != added})


def _torchvision_imagenet(
    name: str, num_classes: int | None, kwargs: dict, added: str | None = None
) -> tuple[nn.Module, dict]:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    if num_classes not in (None, len(weights.meta["categories"])):
        raise SplitinvError(
            f"{name} ImageNet weights have {len(weights.meta['categories'])} classes, not {num_classes}: "
            "drop num_classes, or train a victim with `splitinv-train-victim` and pass its checkpoint."
        )
    model = _construct(lambda **kw: torchvision.models.get_model(name, weights=None, **kw), kwargs, added)
    filename = os.path.basename(weights.url)
    cached = _cache_dir() / filename
    try:
        state = weights.get_state_dict(progress=True, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:
        if cached.is_file():  # a truncated download, or a wrong file put there by hand
            raise SplitinvError(
                f"the cached ImageNet weights {cached} do not load into {name} ({type(err).__name__}): "
                "delete or replace that file."
            ) from err
        if not isinstance(err, (urllib.error.URLError, OSError, RuntimeError)):
            raise
        raise SplitinvError(
            f"ImageNet weights for {name} are not cached and could not be downloaded ({type(err).__name__}): "
            f"put {filename} into {_cache_dir()} (or set TORCH_HOME), or run once online."
        ) from err
    transform = weights.transforms()
    meta = {
        "mean": tuple(transform.mean),
        "std": tuple(transform.std),
        "image_size": int(transform.crop_size[0]),
        "num_classes": len(weights.meta["categories"]),
        "source": f"torchvision:{weights}",
    }
    return model, meta


def _timm_imagenet(
    name: str, num_classes: int | None, kwargs: dict, added: str | None = None
) -> tuple[nn.Module, dict]:
    timm = timm_without_wandb()
    if num_classes is not None:
        kwargs = {**kwargs, "num_classes": num_classes}
    try:
        model = _construct(lambda **kw: timm.create_model(name, pretrained=True, **kw), kwargs, added)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        cfg = timm.models.get_pretrained_cfg(name)
        from huggingface_hub import constants as hf_constants  # a timm dependency

        where = (  # the folder huggingface_hub looks in (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/...)
            f"the Hugging Face cache ({hf_constants.HF_HUB_CACHE}, repo {cfg.hf_hub_id})"
            if cfg is not None and cfg.hf_hub_id
            else f"{_cache_dir()}"
        )
        raise SplitinvError(
            f"ImageNet weights for timm model {name} are not cached and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}): "
            f"put them into {where}, or run once online."
        ) from err
    cfg = model.pretrained_cfg
    meta = {
        "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
        "std": tuple(cfg.get("std", IMAGENET_STD)),
        "image_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
        "num_classes": model.num_classes,
        "source": f"timm:{cfg.get('hf_hub_id') or cfg.get('url') or name}",
    }
    return model, meta


def _build_random(
    family: str, name: str, num_classes: int | None, kwargs: dict, added: str | None = None
) -> nn.Module:
    if num_classes is not None:
        kwargs = {**kwargs, "num_classes": num_classes}
    if family == "torchvision":
        import torchvision

        return _construct(lambda **kw: torchvision.models.get_model(name, weights=None, **kw), kwargs, added)
    timm = timm_without_wandb()
    return _construct(lambda **kw: timm.create_model(name, pretrained=False, **kw), kwargs, added)


def _size_kwargs(family: str, image_size: int | None, kwargs: dict) -> tuple[dict, str | None]:
    """``kwargs`` with the input size for the constructor (a ViT's position embeddings depend on it), and
    the key added (None when none was): :func:`_construct` drops it for constructors that do not take it,
    so the model's own signature decides, not a list of architecture names."""
    key = _SIZE_KEYS.get(family)
    if image_size is None or key is None or "image_size" in kwargs or "img_size" in kwargs:
        return kwargs, None
    return {**kwargs, key: int(image_size)}, key


def _num_classes(model: nn.Module) -> int:
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    with torch.no_grad():
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(last[-1].out_features) if last else -1


def _load_file(path: Path) -> dict[str, Any]:
    return load_weights(
        path,
        "victim",
        "pass weights=imagenet, weights=null (random), or a checkpoint written by `splitinv-train-victim`.",
    )


def _read_weights(path: Path, name: str) -> tuple[Mapping[str, Any], dict[str, Any] | None]:
    """(state_dict, checkpoint) of a weights file: a splitinv victim checkpoint (which must hold victim
    ``name``), a dict with a ``state_dict`` entry, or a plain state_dict (no checkpoint for these two)."""
    obj = _load_file(path)
    if obj.get("format") == CHECKPOINT_FORMAT:
        lacking = [k for k in CHECKPOINT_KEYS if k not in obj]
        if lacking:
            raise SplitinvError(
                f"checkpoint {path} is a {CHECKPOINT_FORMAT} file without {', '.join(lacking)}: edited "
                "or written by hand; save victims with splitinv.train_victim.save_victim (or retrain it)."
            )
        if obj["name"] != name:
            raise SplitinvError(
                f"checkpoint {path} holds a {obj['name']} victim, not {name}: set victim.name={obj['name']}"
            )
        return obj["state_dict"], obj
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"], None
    return obj, None


def _load_state(model: nn.Module, state: Mapping[str, Any], path: Path, name: str) -> None:
    """Load ``state`` into ``model`` exactly (every key, every shape), or fail in one line."""
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    # load_state_dict raises a multi-line RuntimeError on a shape mismatch even with strict=False
    missing, unexpected = ([], []) if mismatched else model.load_state_dict(state, strict=False)
    if missing or unexpected or mismatched:
        raise SplitinvError(
            f"weights {path} do not fit {name} (missing {len(missing)}, unexpected {len(unexpected)}, "
            f"wrong shape {len(mismatched)}, first: {[*mismatched, *missing, *unexpected][:2]}): is it a "
            f"{name} checkpoint, with the right num_classes?"
        )


def build_victim(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    **model_kwargs: Any,
) -> Victim:
    """Build a classifier on [0, 1] images by torchvision or timm name.

    Args:
        name: a torchvision classifier (``resnet18``) or a timm model (``deit_small_patch16_224``); prefix
            ``timm/`` to pick timm where both libraries know the name.
        weights: ``"imagenet"`` (the library's pretrained weights, from the torch/HF cache or downloaded),
            a path to a state_dict or a splitinv victim checkpoint (loaded with ``weights_only=True``), or
            ``None`` for random initialisation (warned about, and recorded as ``random``).
        num_classes: output classes (default: the weights' classes, or the library default of 1000).
        image_size: the side of the square input images (default: the weights' resolution, or 224).
        model_kwargs: passed to the model constructor (e.g. ``image_size`` for torchvision ViTs).
    """
    check_positive("victim.image_size", image_size)
    check_positive("victim.num_classes", num_classes)
    if str(name) in VICTIMS:
        return VICTIMS[str(name)](weights, num_classes=num_classes, image_size=image_size, **model_kwargs)
    family, name = _resolve_family(str(name))
    added: str | None = None
    if str(weights).lower() != "imagenet" or family == "timm":  # torchvision's weights fix their own size
        model_kwargs, added = _size_kwargs(family, image_size, model_kwargs)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    weights_desc: str
    default_size = 224
    if is_random_weights(weights):
        model = _build_random(family, name, num_classes, model_kwargs, added)
        weights_desc = "random"
        warnings.warn(
            f"victim {name} has RANDOM weights (weights=None): its activations are not those of a trained "
            "network; pass weights=imagenet or a checkpoint for meaningful results.",
            stacklevel=2,
        )
    elif str(weights).lower() == "imagenet":
        load = _torchvision_imagenet if family == "torchvision" else _timm_imagenet
        model, meta = load(name, num_classes, model_kwargs, added)
        mean, std, default_size, num_classes = (
            meta["mean"],
            meta["std"],
            meta["image_size"],
            meta["num_classes"],
        )
        weights_desc = "imagenet"
    else:
        path = Path(weights).expanduser()
        state, checkpoint = _read_weights(path, name)
        if checkpoint is not None:
            check_recorded_size(path, checkpoint, image_size)
            num_classes = num_classes or checkpoint["num_classes"]
            mean, std = tuple(checkpoint["mean"]), tuple(checkpoint["std"])
            default_size = checkpoint["image_size"]
            # ViTs' position embeddings depend on the size they were built for: build for the checkpoint's
            # (a no-op when image_size was passed)
            if added is None:
                model_kwargs, added = _size_kwargs(family, default_size, model_kwargs)
        model = _build_random(family, name, num_classes, model_kwargs, added)
        _load_state(model, state, path, name)
        weights_desc = str(path)
    model.eval()
    size = int(image_size or default_size)
    victim = Victim(
        model,
        name=name,
        family=family,
        weights=weights_desc,
        image_size=size,
        num_classes=num_classes or _num_classes(model),
        mean=mean,
        std=std,
    )
    return victim.eval()


def check_positive(setting: str, value: Any) -> None:
    """One line for a size or count that is not a positive integer (None: the default, allowed)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SplitinvError(
            f"{setting}={value!r}: give a positive integer (or leave it out for the default)."
        )


def check_recorded_size(path: Path, checkpoint: Mapping[str, Any], image_size: int | None) -> None:
    """A checkpoint trained at one image size, run at another, computes something else (a 32-px network at
    64 px loses most of its accuracy, silently): refused in one line, before any work."""
    recorded = checkpoint.get("image_size")
    if image_size is not None and recorded is not None and int(recorded) != int(image_size):
        raise SplitinvError(
            f"checkpoint {path} was trained at {recorded} px, the run asks {image_size} px: set "
            f"victim.image_size={recorded} (or train a victim at {image_size} px)."
        )


# inputs above this side get a cost estimate before their first full-size forward pass
LARGE_INPUT = 512
# an estimated forward pass above this many seconds is announced (a warning with the estimate)
SLOW_FORWARD_S = 20.0


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes free for a forward pass on ``device``: a GPU's free memory, else the host's MemAvailable."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate_forward(
    victim: nn.Module, image_size: int, channels: int = 3, probe: int = 64
) -> dict[str, float]:
    """Memory and time of one image's forward pass at ``image_size``, extrapolated from one at ``probe`` px
    (activations and work of a convolutional network grow with the image's area): ``peak_bytes`` (the
    parameters plus the two largest activations alive at once, with a 1.5x margin), ``largest_bytes``,
    ``seconds``. A probe that fails (a network that takes only its own size) gives an empty dict."""
    import time

    sizes: list[int] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    leaves = [m for m in victim.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = victim.training
    victim.eval()
    try:
        with torch.no_grad():
            device = next(victim.parameters(), torch.zeros(())).device
            x = torch.zeros(1, channels, probe, probe, device=device)
            seconds = math.inf
            for _ in range(3):  # the first call pays one-off costs: the fastest of three
                sizes.clear()
                start = time.perf_counter()
                victim(x)
                seconds = min(seconds, time.perf_counter() - start)
    except Exception:
        return {}
    finally:
        for handle in handles:
            handle.remove()
        victim.train(was_training)
    ratio = (image_size / probe) ** 2
    params = sum(p.numel() * p.element_size() for p in victim.parameters())
    top = sorted(sizes, reverse=True)[:2] or [0]
    return {
        "peak_bytes": params + 1.5 * sum(top) * ratio,
        "largest_bytes": top[0] * ratio,
        "seconds": seconds * ratio,
    }


def check_input_cost(victim: nn.Module, image_size: int, channels: int = 3) -> None:
    """Before a large input's first forward pass (side above :data:`LARGE_INPUT`): refuse one that cannot fit
    in the machine's free memory, and announce one that will take long, both with the estimate
    (:func:`estimate_forward`), instead of minutes of silence."""
    if image_size <= LARGE_INPUT:
        return
    cost = estimate_forward(victim, image_size, channels, probe=max(64, min(512, image_size // 4)))
    if not cost:
        return
    name = getattr(victim, "name", type(victim).__name__)
    native = getattr(victim, "image_size", None)
    built = f" (built for {native} px)" if native and native != image_size else ""
    device = next(victim.parameters(), torch.zeros(())).device
    need, free = cost["peak_bytes"], available_memory(device)
    if free is not None and need > free:
        raise SplitinvError(
            f"victim {name} at {image_size} px needs about {need / 2**30:.1f} GiB for one image's forward "
            f"pass, more than the {free / 2**30:.1f} GiB free here: lower the image size (victim.image_size, "
            f"--image-size){built}."
        )
    if cost["seconds"] > SLOW_FORWARD_S:  # logged, not warned: shown now, not when a caller's catch ends
        log.warning(
            f"victim {name} at {image_size} px{built}: one image's forward pass takes roughly "
            f"{cost['seconds']:.0f} s and {need / 2**30:.1f} GiB here (extrapolated from a smaller input: an "
            "upper estimate); attacks need many: lower "
            "the image size (victim.image_size, --image-size) unless you mean it.",
        )


def check_image_size(victim: nn.Module, image_size: int, channels: int = 3) -> None:
    """Fail with one clear line when ``victim`` cannot take ``image_size`` x ``image_size`` images (a large
    input is first checked against the machine's memory, :func:`check_input_cost`)."""
    check_input_cost(victim, image_size, channels)
    was_training = victim.training
    victim.eval()
    try:
        with torch.no_grad():
            victim(torch.zeros(1, channels, image_size, image_size))
    except Exception as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        name = getattr(victim, "name", type(victim).__name__)
        native = getattr(victim, "image_size", None)
        hint = f" (it was built for {native} px; set victim.image_size)" if native else ""
        raise SplitinvError(
            f"victim {name} cannot take {image_size}x{image_size} images: {first}{hint}"
        ) from err
    finally:
        victim.train(was_training)


# ---------------------------------------------------------------------------------------------------------
# Your own network


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def _per_channel(values: Any, what: str, channels: int) -> tuple[float, ...]:
    """mean / std as one float per channel, or a one-line error."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise SplitinvError(f"{what} must be a list of numbers (one per channel), got {values!r}.") from None
    if len(out) != channels:
        raise SplitinvError(
            f"{what} has {len(out)} value(s) but channels={channels}: give one value per input channel."
        )
    return out


def _at_least_one(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SplitinvError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


def _forward_one(victim: Victim, channels: int) -> Any:
    """The victim's output for one [0, 1] image at its size, or a one-line error naming what to change."""
    size = victim.image_size
    try:
        device = next(victim.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = victim.training
    victim.eval()
    try:
        with torch.no_grad():
            return victim(x)
    except Exception as err:
        raise SplitinvError(
            f"victim {victim.name}: forward on a (1, {channels}, {size}, {size}) batch failed "
            f"({_first_line(err)}): image_size and channels must match what the network takes."
        ) from err
    finally:
        victim.train(was_training)


def _describe_output(out: Any) -> str:
    return f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"


def check_victim(victim: Victim, channels: int | None = None) -> None:
    """Fail in one line unless a run can use ``victim``: it takes (B, channels, image_size, image_size)
    images, returns (B, num_classes) logits, and has at least one cut point."""
    from splitinv.cut import cut_points

    channels = int(channels or victim.normalize.mean.shape[1])
    out = _forward_one(victim, channels)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, victim.num_classes):
        raise SplitinvError(
            f"victim {victim.name} returns {_describe_output(out)} for one image, not (1, "
            f"{victim.num_classes}) logits: make forward return (batch, num_classes) class logits, or set "
            "num_classes."
        )
    try:
        points = cut_points(victim)
    except SplitinvError:
        raise
    except Exception as err:
        raise SplitinvError(
            f"victim {victim.name}: its cut points could not be listed ({_first_line(err)}): build it from "
            "named submodules (attributes or nn.Sequential children), each called once in forward."
        ) from err
    if not points:
        raise SplitinvError(
            f"victim {victim.name} has no cut points: build it from named submodules (attributes or "
            "nn.Sequential children), each called once in forward, so that there is a layer to cut after."
        )


def wrap_module(
    module: nn.Module,
    *,
    name: str,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    num_classes: int,
    channels: int = 3,
    weights: str | os.PathLike | None = None,
) -> Victim:
    """Your own network as a :class:`Victim` on [0, 1] images: ``module(normalize(x))``.

    Args:
        module: a classifier taking normalised ``(B, channels, image_size, image_size)`` images and returning
            ``(B, num_classes)`` logits, built from named submodules (its cut points).
        name: what results files call it (and what a checkpoint of it records).
        mean, std: the per-channel normalisation the network expects (one value per channel).
        image_size: the side of the square images it takes.
        num_classes: the width of its logits.
        channels: input channels (1 or 3 for splitinv's datasets).
        weights: ``None`` (the module's parameters as they are, recorded as ``own``), or a path to a
            state_dict or to a checkpoint written by ``splitinv-train-victim``, loaded as
            :func:`build_victim` loads one (``weights_only=True``, every key and shape checked).

    Before it returns, the victim is probed: one forward pass at that size, the output's shape, its cut
    points. Each failure is one line saying what to change.
    """
    read = None if is_random_weights(weights) else _read_weights(Path(weights).expanduser(), str(name))
    return _wrap(module, name, mean, std, image_size, num_classes, channels, weights, read)


def _wrap(
    module: Any,
    name: Any,
    mean: Any,
    std: Any,
    image_size: Any,
    num_classes: Any,
    channels: Any,
    weights: Any,
    read: tuple[Mapping[str, Any], dict[str, Any] | None] | None,
) -> Victim:
    """wrap_module, with the weights file already read (``read``: what _read_weights returned, or None)."""
    if isinstance(module, Victim):
        raise SplitinvError(f"{module.name} is already a Victim: pass its network (victim.model) instead.")
    if read is not None and read[1] is not None and isinstance(image_size, int):
        check_recorded_size(Path(weights).expanduser(), read[1], image_size)
    if not isinstance(module, nn.Module):
        raise SplitinvError(f"wrap_module takes an nn.Module, got a {type(module).__name__}.")
    if not isinstance(name, str) or not name:
        raise SplitinvError(f"victim name must be a non-empty string, got {name!r}.")
    channels = _at_least_one(channels, "channels")
    image_size = _at_least_one(image_size, "image_size")
    num_classes = _at_least_one(num_classes, "num_classes")
    mean, std = _per_channel(mean, "mean", channels), _per_channel(std, "std", channels)
    if any(s <= 0 for s in std):
        raise SplitinvError(f"std must be positive (it divides the pixels), got {list(std)}.")
    weights_desc = OWN_WEIGHTS
    if read is not None:
        path = Path(weights).expanduser()
        state, checkpoint = read
        if checkpoint is not None:
            trained = (tuple(checkpoint["mean"]), tuple(checkpoint["std"]))
            if len(trained[0]) != channels or not torch.allclose(
                torch.tensor(trained, dtype=torch.float64), torch.tensor((mean, std), dtype=torch.float64)
            ):
                raise SplitinvError(
                    f"checkpoint {path} was trained with mean {list(trained[0])} and std {list(trained[1])}, "
                    f"not {list(mean)} and {list(std)}: set mean and std to the checkpoint's."
                )
        _load_state(module, state, path, name)
        weights_desc = str(path)
    victim = Victim(
        module,
        name=name,
        family="custom",
        weights=weights_desc,
        image_size=image_size,
        num_classes=num_classes,
        mean=mean,
        std=std,
    )
    check_victim(victim, channels)
    return victim.eval()


def build_custom_victim(
    factory: str | None = None,
    name: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    image_size: int = 32,
    num_classes: int | None = None,
    channels: int = 3,
    weights: str | os.PathLike | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Victim:
    """``victim=custom``: the network that ``factory`` (``"package.module:function"``) returns, as a Victim.

    The factory is called with ``kwargs``, plus ``num_classes`` when it has a ``num_classes`` parameter (so
    that ``splitinv-train-victim`` sizes it for the dataset). ``name`` defaults to the function's name;
    ``num_classes`` to a ``splitinv-train-victim`` checkpoint's, else to the width of the network's output.
    The rest is :func:`wrap_module`'s.
    """
    if factory is None or not str(factory).strip():
        raise SplitinvError(
            "victim=custom needs victim.factory=package.module:function, naming a function on PYTHONPATH "
            "that returns your nn.Module."
        )
    spec = str(factory).strip()
    function = import_target(spec, what="victim.factory")
    if not callable(function):
        raise SplitinvError(f"victim.factory={spec} is not a function (it is a {type(function).__name__}).")
    name = str(name) if name else spec.rpartition(":")[2].rpartition(".")[2]
    read = None if is_random_weights(weights) else _read_weights(Path(weights).expanduser(), name)
    if num_classes is None and read is not None and read[1] is not None:
        num_classes = int(read[1]["num_classes"])
    call_kwargs = dict(kwargs or {})
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # callables without a signature
        parameters = {}
    if num_classes is not None and "num_classes" in parameters and "num_classes" not in call_kwargs:
        call_kwargs["num_classes"] = int(num_classes)
    try:
        module = function(**call_kwargs)
    except Exception as err:
        raise SplitinvError(f"victim.factory={spec} raised {_first_line(err)}") from err
    if not isinstance(module, nn.Module):
        raise SplitinvError(
            f"victim.factory={spec} returned a {type(module).__name__}, not an nn.Module: return the network."
        )
    if num_classes is None:  # the width of the network's output
        channels = _at_least_one(channels, "channels")
        probe = Victim(
            module,
            name=name,
            family="custom",
            weights=OWN_WEIGHTS,
            image_size=_at_least_one(image_size, "image_size"),
            num_classes=0,
            mean=_per_channel(mean, "mean", channels),
            std=_per_channel(std, "std", channels),
        )
        out = _forward_one(probe, channels)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 1:
            raise SplitinvError(
                f"victim {name} returns {_describe_output(out)} for one image, not (1, num_classes) logits: "
                "make forward return (batch, num_classes) class logits."
            )
        num_classes = int(out.shape[1])
    return _wrap(module, name, mean, std, image_size, num_classes, channels, weights, read)
