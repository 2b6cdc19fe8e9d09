"""Cut a network at a named layer into ``(head, tail)`` with ``tail(head(x)) == model(x)``.

The model is traced once with torch.fx (torchvision's NodePathTracer, which names every node by its module
path, with timm's untraceable leaves registered). A node is a valid cut point when it is the only value that
crosses it: everything computed before it and used after it is that node itself (parameters aside). A point
inside a residual block fails that test because the skip path crosses it. Cut point names are module paths
(``layer3``, ``features.6``, ``blocks.5``, ``encoder.layers.encoder_layer_5``); a module's output is the last
node traced inside it.

Models that FX cannot trace are cut with forward hooks instead: the head stops the forward pass at the module,
the tail replaces that module's output. The hook tail re-runs the layers before the cut on a dummy input, so a
skip path around the cut is detected empirically (the output would depend on the dummy, relative to the
output's own scale). Some models trace but keep sizes read before a block (``B, N, C = x.shape``, xcit's
``Hp, Wp``) as graph values used after it, so FX sees every block boundary crossed; ``method="auto"`` then
cuts with forward hooks when they find more valid points.
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.models.feature_extraction import NodePathTracer

from splitinv.errors import SplitinvError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CutPoint:
    """A valid cut point: its canonical name, its position in forward order, other names for it, its shape."""

    name: str
    index: int
    aliases: tuple[str, ...] = ()
    shape: tuple[int, ...] | None = None


@dataclass
class _Graph:
    """A traced model: the graph, each node's module-path name, and each valid node's names."""

    model: nn.Module
    graph: fx.Graph
    qualname: dict[fx.Node, str]
    valid: list[fx.Node]  # valid cut nodes that are listed (have a module path or top-level name), in order
    cuttable: set[fx.Node]  # every valid cut node, named or not
    names: dict[str, fx.Node]  # every accepted name -> node (module paths and node names)
    canonical: dict[fx.Node, str]
    position: dict[fx.Node, int] = field(default_factory=dict)
    # module paths that only values computed from tensor sizes cross (FX keeps them as graph values)
    size_blocked: list[str] = field(default_factory=list)


def _body(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """A Victim is cut inside its classifier; its normalisation stays at the front of the head."""
    normalize = getattr(model, "normalize", None)
    inner = getattr(model, "model", None)
    if isinstance(normalize, nn.Module) and isinstance(inner, nn.Module):
        return inner, normalize
    return model, None


def _tracer_kwargs(model: nn.Module) -> dict[str, Any]:
    leaves: list[type] = []
    functions: list[Any] = []
    # timm marks the modules and functions that FX cannot trace through; they occur only in timm's own
    # modules, so a model without one does not import timm (about 1.5 CPU-s of a small job)
    if any(type(m).__module__.startswith("timm.") for m in model.modules()):
        try:
            from splitinv.imports import timm_without_wandb

            timm_without_wandb()  # timm without W&B (splitinv.imports)
            from timm.layers import get_notrace_functions, get_notrace_modules

            leaves, functions = list(get_notrace_modules()), list(get_notrace_functions())
        except ImportError:  # pragma: no cover - timm is a dependency, but cutting works without it
            pass
    import torchvision

    return {
        "leaf_modules": leaves,
        "autowrap_functions": tuple(functions),
        "autowrap_modules": (math, torchvision.ops),
    }


def _concrete_args(model: nn.Module) -> dict[str, Any]:
    """Specialise every forward argument after the first to its default (e.g. timm ViT's attn_mask=None)."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


_CACHE: dict[int, tuple[nn.Module, _Graph]] = {}
_AUTO: dict[int, tuple[nn.Module, str]] = {}  # the method "auto" chose, per model object


def _size_values(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes whose values are computed from tensor sizes alone (``x.shape``, ``x.size(1)``, ``H // 2``)."""
    sized: set[fx.Node] = set()
    for n in nodes:
        if n.op == "call_method" and n.target in ("size", "dim"):
            sized.add(n)
        elif n.op == "call_function" and n.target is builtins.getattr and n.args[1] in ("shape", "ndim"):
            sized.add(n)
        elif n.op in ("call_function", "call_method") and n.all_input_nodes:
            if all(a in sized for a in n.all_input_nodes):
                sized.add(n)
    return sized


def _trace(model: nn.Module) -> _Graph:
    """Trace ``model`` in eval mode and find its valid cut nodes (cached per model object)."""
    hit = _CACHE.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    was_training = model.training
    model.eval()
    try:
        tracer = NodePathTracer(**_tracer_kwargs(model))
        graph = tracer.trace(model, concrete_args=_concrete_args(model) or None)
    finally:
        model.train(was_training)
    nodes = list(graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((position[u] for u in n.users), default=-1) for n in nodes}
    qualname = dict(tracer.node_to_qualname)

    # Sweep forward keeping the set of values that are live across each position.
    valid: list[fx.Node] = []
    blocked: set[fx.Node] = set()  # crossed by size values only
    sized = _size_values(nodes)
    live: set[fx.Node] = set()
    first_input = next((n for n in nodes if n.op == "placeholder"), None)
    for i, node in enumerate(nodes):
        if node.op == "output":
            break
        if node.op != "get_attr" and last_use[node] > i:
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        if node.op in ("placeholder", "get_attr") or node is first_input or node not in live:
            continue
        if live == {node}:
            valid.append(node)
        elif live - {node} <= sized and node not in sized:
            blocked.add(node)

    valid_set = set(valid)
    canonical: dict[fx.Node, str] = {}
    names: dict[str, fx.Node] = {}
    # A module path names the last node traced inside it.
    last_in_module: dict[str, fx.Node] = {}
    for node in nodes:
        q = qualname.get(node)
        if q is None:
            continue
        parts = q.split(".")
        for depth in range(1, len(parts) + 1):
            last_in_module[".".join(parts[:depth])] = node
    module_paths = {name for name, _ in model.named_modules() if name}
    for path in sorted(module_paths, key=lambda p: (p.count("."), p)):
        node = last_in_module.get(path)
        if node is None:
            continue
        names.setdefault(path, node)
        if node in valid_set and node not in canonical:
            canonical[node] = path
    for node in valid:  # valid points that no module names are accepted by node name
        q = qualname.get(node, node.name)
        names.setdefault(q, node)
        if "." not in q:  # and listed when they sit at the top level (e.g. resnet's flatten)
            canonical.setdefault(node, q)
    listed = [n for n in valid if n in canonical]
    size_blocked: dict[fx.Node, str] = {}
    for path in sorted(module_paths, key=lambda p: (p.count("."), p)):
        node = last_in_module.get(path)
        if node in blocked:
            size_blocked.setdefault(node, path)
    traced = _Graph(model, graph, qualname, listed, set(valid), names, canonical, position)
    traced.size_blocked = sorted(size_blocked.values(), key=lambda p: position[names[p]])
    _CACHE.clear()  # keep one model: graphs of large models are not small
    _CACHE[id(model)] = (model, traced)
    return traced


def _fx_traceable(model: nn.Module) -> bool:
    try:
        _trace(model)
    except Exception as err:
        log.info(
            "FX cannot trace %s (%s: %s); using forward hooks", type(model).__name__, type(err).__name__, err
        )
        return False
    return True


def _sample_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    size = int(getattr(model, "image_size", 224))
    mean = getattr(getattr(model, "normalize", None), "mean", None)
    channels = int(mean.shape[1]) if isinstance(mean, torch.Tensor) else 3
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)


# ---------------------------------------------------------------------------------------------------------
# Listing


def cut_points(model: nn.Module, method: str = "auto") -> list[str]:
    """The valid cut point names of ``model`` (a Victim or any nn.Module), in forward order."""
    return [p.name for p in describe_cut_points(model, method=method, with_shapes=False)]


def describe_cut_points(
    model: nn.Module, method: str = "auto", with_shapes: bool = True, image_size: int | None = None
) -> list[CutPoint]:
    """Valid cut points with their aliases and (optionally) output shapes for one image (no batch dim)."""
    body, normalize = _body(model)
    method = _method(model, body, method)
    if method == "hooks":
        return _hook_points(model, body, with_shapes, image_size)
    traced = _trace(body)
    shapes: dict[fx.Node, tuple[int, ...]] = {}
    if with_shapes:
        x = _sample_input(model)
        if image_size:
            x = torch.rand(1, x.shape[1], image_size, image_size, device=x.device)
        if normalize is not None:
            x = normalize(x)
        gm = fx.GraphModule(body, traced.graph)
        was_training = body.training
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
        body.train(was_training)
        for node in traced.valid:
            meta = node.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                shapes[node] = tuple(meta.shape[1:])
    points = []
    for i, node in enumerate(traced.valid):
        name = traced.canonical[node]
        aliases = tuple(sorted(n for n, v in traced.names.items() if v is node and n != name))
        points.append(CutPoint(name, i, aliases, shapes.get(node)))
    return points


def _blocks(model: nn.Module, listed: set[str]) -> list[str]:
    """The repeated blocks of a transformer: the children of the container with most same-type children."""
    body, _ = _body(model)
    best: list[str] = []
    for name, module in body.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(module.named_children())
        kinds = [type(m) for _, m in children]
        common = max(set(kinds), key=kinds.count) if kinds else None
        names = [f"{name}.{child}" if name else child for child, m in children if type(m) is common]
        if len(names) >= 4 and len(names) > len(best) and all(n in listed for n in names):
            best = names
    return best


def stage_points(model: nn.Module, every: int | None = None, method: str = "auto") -> list[str]:
    """Cut points for a split-point sweep, without typing layer names.

    CNNs: stage boundaries, the last point at each feature-map resolution (among the shallowest module paths
    there, so ``layer1`` rather than a conv inside the next block). Transformers (token outputs): every
    block. ``every=k`` keeps every k-th of those (CNNs: every k-th listed cut point instead).
    """
    points = [p for p in describe_cut_points(model, method=method) if p.shape is not None]
    shapes = {n: p.shape for p in points for n in (p.name, *p.aliases)}
    blocks = _blocks(model, set(shapes))
    if blocks and all(len(shapes[b]) == 2 for b in blocks):  # tokens: the transformer blocks
        return blocks[every - 1 :: every] if every else blocks
    maps = [p for p in points if len(p.shape) == 3]
    if every:
        return [p.name for p in points[every - 1 :: every]]
    by_size: dict[tuple[int, ...], list[CutPoint]] = {}
    for p in maps:
        by_size.setdefault(tuple(p.shape[1:]), []).append(p)
    stages = []
    for group in by_size.values():
        shallowest = min(p.name.count(".") for p in group)
        stages.append([p for p in group if p.name.count(".") == shallowest][-1])
    return [p.name for p in sorted(stages, key=lambda p: p.index)]


def resolve_point(model: nn.Module, spec: str, method: str = "auto") -> str:
    """A cut point from a name or a victim-relative spec, so one sweep can span architectures.

    ``stage:K`` (the K-th of :func:`stage_points`, from 1), ``depth:F`` (the listed point nearest to relative
    depth F in [0, 1]), ``index:K`` (the K-th listed point, from 0); anything else is a name, returned as is.
    """
    kind, sep, value = str(spec).partition(":")
    if not sep or kind not in ("stage", "depth", "index"):
        return str(spec)
    name = getattr(model, "name", type(model).__name__)
    try:
        number = float(value) if kind == "depth" else int(value)
    except ValueError:
        raise SplitinvError(f"cut={spec!r}: {kind}: takes a number, e.g. cut={kind}:2") from None
    if kind == "stage":
        stages = stage_points(model, method=method)
        if not 1 <= number <= len(stages):
            raise SplitinvError(f"cut={spec!r}: {name} has {len(stages)} stages (1..{len(stages)}): {stages}")
        return stages[int(number) - 1]
    points = cut_points(model, method=method)
    if kind == "index":
        if not 0 <= number < len(points):
            raise SplitinvError(
                f"cut={spec!r}: {name} has {len(points)} cut points (index 0..{len(points) - 1})"
            )
        return points[int(number)]
    if not 0 <= number <= 1:
        raise SplitinvError(f"cut={spec!r}: depth is a fraction between 0 and 1")
    return points[round(number * (len(points) - 1))]


def _method(model: nn.Module, body: nn.Module, method: str) -> str:
    if method not in ("auto", "fx", "hooks"):
        raise SplitinvError(f"unknown cut method {method!r}: use auto, fx or hooks.")
    if method == "auto":
        hit = _AUTO.get(id(body))
        if hit is not None and hit[0] is body:
            return hit[1]
        chosen = _auto_method(model, body)
        _AUTO.clear()
        _AUTO[id(body)] = (body, chosen)
        return chosen
    if method == "fx":
        _trace(body)  # let FX's own error through: the user asked for FX explicitly
    return method


def _auto_method(model: nn.Module, body: nn.Module) -> str:
    """FX where it traces and sees the block boundaries; forward hooks where FX cannot trace, or where FX
    finds fewer than two thirds of the points: the module outputs that only size values cross (see the
    module docstring) and that hooks can cut are more than half as many as FX's points."""
    if not _fx_traceable(body):
        return "hooks"
    traced = _trace(body)
    if 2 * len(traced.size_blocked) <= len(traced.valid):
        return "fx"
    x = _sample_input(model)
    normalize = getattr(model, "normalize", None) if body is not model else None
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            x = normalize(x) if normalize is not None else x
            called = {n for name, aliases in _called_once(body, x) for n in (name, *aliases)}
            hooked = [p for p in traced.size_blocked if p in called and _hook_valid(body, p, x)]
    except Exception as err:  # a model that hooks cannot run: keep FX's points
        log.info("forward hooks cannot cut %s (%s)", type(body).__name__, _first_line(err))
        return "fx"
    finally:
        body.train(was_training)
    if 2 * len(hooked) <= len(traced.valid):
        return "fx"
    log.info(
        "%s: FX finds %d cut points; %d more module outputs (%s, ...) are crossed only by sizes read before "
        "them, and forward hooks can cut there: cutting with forward hooks (method fx forces FX)",
        getattr(model, "name", type(body).__name__),
        len(traced.valid),
        len(hooked),
        ", ".join(hooked[:3]),
    )
    return "hooks"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------------------------
# Cutting


def _unknown_point(
    point: str, model_name: str, traced: _Graph | None, valid_names: list[str]
) -> SplitinvError:
    """The one-line error for a bad cut point, naming the nearest valid points."""
    if traced is not None and point in traced.names:
        node = traced.names[point]
        pos = traced.position[node]
        before = [n for n in traced.valid if traced.position[n] < pos]
        after = [n for n in traced.valid if traced.position[n] > pos]
        near = ([traced.canonical[before[-1]]] if before else []) + (
            [traced.canonical[after[0]]] if after else []
        )
        return SplitinvError(
            f"cut point {point!r} of {model_name} has other values crossing it (it is inside a block with a "
            f"skip connection): cut at a block boundary; nearest valid points: {', '.join(near)}."
        )
    close = difflib.get_close_matches(point, valid_names, n=3, cutoff=0.5)
    if not close and traced is not None:  # e.g. a path inside a block: suggest the points that bracket it
        prefix = point.rsplit(".", 1)[0]
        close = [n for n in valid_names if n.startswith(prefix)][:3]
    hint = f" nearest valid points: {', '.join(close)};" if close else ""
    return SplitinvError(
        f"{model_name} has no cut point {point!r}:{hint} list them with `splitinv layers {model_name}`."
    )


def cut(model: nn.Module, point: str, method: str = "auto") -> tuple[nn.Module, nn.Module]:
    """Split ``model`` at ``point`` into ``(head, tail)``; both share the model's parameters.

    ``tail(head(x))`` equals ``model(x)`` in eval mode. For a Victim, the head starts with its normalisation,
    so it takes [0, 1] images like the victim does.
    """
    body, normalize = _body(model)
    model_name = getattr(model, "name", type(body).__name__)
    method = _method(model, body, method)
    if method == "hooks":
        head, tail = _hook_cut(model, body, point, model_name)
    else:
        traced = _trace(body)
        node = traced.names.get(point)
        if node is None or node not in traced.cuttable:
            names = [traced.canonical[n] for n in traced.valid]
            raise _unknown_point(point, model_name, traced, names)
        head, tail = _fx_head(traced, node), _fx_tail(traced, node)
    if normalize is not None:
        head = nn.Sequential(OrderedDict(normalize=normalize, body=head))
    head.cut_point, tail.cut_point = point, point
    head.train(model.training)
    tail.train(model.training)
    return head, tail


class _Outputs(nn.Module):
    """Several cut points' activations from one forward pass, as a dict name -> tensor."""

    def __init__(self, normalize: nn.Module | None, body: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.normalize, self.body, self.names = normalize, body, names

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.normalize is not None:
            x = self.normalize(x)
        return dict(zip(self.names, self.body(x), strict=True))


class _HookOutputs(_Outputs):
    """The forward-hook version of :class:`_Outputs` (stops after the deepest point)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.normalize is not None:
            x = self.normalize(x)
        found: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Any:
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                found[name] = out.clone()
                if len(found) == len(self.names):
                    raise _Stop(out)

            return hook

        handles = [self.body.get_submodule(n).register_forward_hook(keep(n)) for n in self.names]
        try:
            self.body(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return {n: found[n] for n in self.names}


def extractor(model: nn.Module, points: list[str], method: str = "auto") -> nn.Module:
    """A module returning ``{point: head_point(x)}`` for several cut points in ONE forward pass.

    Every point is checked like :func:`cut` (an invalid one raises); the layers after the deepest point are
    not run. Used to cache the activations of a split-point sweep.
    """
    body, normalize = _body(model)
    method = _method(model, body, method)
    for point in points:  # the same validation and messages as cut()
        cut(model, point, method=method)
    if method == "hooks":
        return _HookOutputs(normalize, body, list(points))
    traced = _trace(body)
    graph, val_map = _copy_graph(traced.graph)
    wanted = [val_map[traced.names[p]] for p in points]
    nodes = list(graph.nodes)
    last = max(nodes.index(n) for n in wanted)
    for n in reversed(nodes[last + 1 :]):
        graph.erase_node(n)
    copies = []
    for n in wanted:  # copied at once: a later in-place op (BN then ReLU(inplace=True)) must not change it
        with graph.inserting_after(n):
            copies.append(graph.call_method("clone", (n,)))
    graph.output(tuple(copies))
    return _Outputs(normalize, _module(traced.model, graph, "Extractor"), list(points))


def _copy_graph(graph: fx.Graph) -> tuple[fx.Graph, dict[fx.Node, fx.Node]]:
    new = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    new.output(new.graph_copy(graph, val_map))  # graph_copy returns the output value, not the output node
    return new, val_map


def _fx_head(traced: _Graph, node: fx.Node) -> fx.GraphModule:
    graph, val_map = _copy_graph(traced.graph)
    cut_node = val_map[node]
    nodes = list(graph.nodes)
    cut_pos = nodes.index(cut_node)
    for n in reversed(nodes[cut_pos + 1 :]):  # everything after the cut, asserts included
        graph.erase_node(n)
    graph.output(cut_node)
    return _module(traced.model, graph, "Head")


def _fx_tail(traced: _Graph, node: fx.Node) -> fx.GraphModule:
    graph, val_map = _copy_graph(traced.graph)
    cut_node = val_map[node]
    nodes = list(graph.nodes)
    cut_pos = nodes.index(cut_node)
    with graph.inserting_before(nodes[0]):
        z = graph.placeholder("z")
        # a copy: an in-place op right after the cut (resnet's ReLU after bn1) must not write into the input
        z_copy = graph.call_method("clone", (z,))
    cut_node.replace_all_uses_with(z_copy)
    for n in reversed(nodes[: cut_pos + 1]):
        if n.op == "get_attr" and n.users:  # parameters used after the cut (class tokens, embeddings)
            continue
        if n.users:
            raise SplitinvError(f"internal: {n.name} crosses the cut at {node.name}")  # pragma: no cover
        graph.erase_node(n)
    return _module(traced.model, graph, "Tail")


def _module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule that keeps only the submodules its (dead-code-free) graph uses; parameters are shared."""
    gm = fx.GraphModule(root, graph, class_name=name)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


# ---------------------------------------------------------------------------------------------------------
# Forward-hook fallback


class _Stop(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        self.output = output


class HookHead(nn.Module):
    """Runs the model and stops at ``module``'s output (for models that FX cannot trace)."""

    def __init__(self, body: nn.Module, module: str) -> None:
        super().__init__()
        self.body, self.module = body, module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def stop(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            raise _Stop(out)

        handle = self.body.get_submodule(self.module).register_forward_hook(stop)
        try:
            self.body(x)
        except _Stop as s:
            return s.output
        finally:
            handle.remove()
        raise SplitinvError(f"module {self.module!r} was not called in forward: choose another cut point.")


class HookTail(nn.Module):
    """Runs the model on a dummy input with ``module``'s output replaced by the given activation."""

    def __init__(self, body: nn.Module, module: str, input_shape: tuple[int, ...], fill: float = 0.0) -> None:
        super().__init__()
        self.body, self.module, self.input_shape, self.fill = body, module, tuple(input_shape), fill

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        dummy = torch.full((z.shape[0], *self.input_shape), self.fill, device=z.device, dtype=z.dtype)
        # a copy: in-place ops after the module (ReLU(inplace=True)) must not write into the input
        handle = self.body.get_submodule(self.module).register_forward_hook(lambda _m, _i, _o: z.clone())
        try:
            return self.body(dummy)
        finally:
            handle.remove()


def _called_once(body: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[str, ...]]]:
    """Modules called once in a forward pass, in the order their outputs appear, as (name, aliases).

    A container whose output is its last child's output is one point: the outermost name is kept.
    """
    # keep the outputs themselves (ids of freed tensors are reused) and their version counters: a module
    # followed by an in-place op (BN then ReLU(inplace=True), a residual `out += identity`) returns the same
    # tensor object as its parent, but not the same values
    calls: list[tuple[str, Any, int | None]] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: calls.append((name, out, _version(out))))
        for name, m in body.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            body(x)
    finally:
        for h in handles:
            h.remove()
    counts: dict[str, int] = {}
    for name, _, _ in calls:
        counts[name] = counts.get(name, 0) + 1
    points: list[tuple[str, tuple[str, ...]]] = []
    last: tuple[Any, int | None] | None = None
    for name, out, version in calls:
        if counts[name] != 1:
            continue
        # the same, unmodified tensor as the previous point: the parent returning it
        if points and last is not None and out is last[0] and version == last[1]:
            prev, aliases = points.pop()
            points.append((name, (*aliases, prev)))
        else:
            points.append((name, ()))
        last = (out, version)
    return points


def _version(out: Any) -> int | None:
    """A tensor's version counter (bumped by in-place ops); None for other outputs and inference tensors."""
    try:
        return int(out._version) if isinstance(out, torch.Tensor) else None
    except RuntimeError:  # inference tensors have no version counter
        return None


def _hook_valid(body: nn.Module, module: str, x: torch.Tensor, rtol: float = 1e-4) -> bool:
    """True when only ``module``'s output crosses it: the tail gives the model's output, whatever the dummy.

    Tolerances are relative to the output's own scale (its largest magnitude): a random-weight network's
    logits can be 1e-14, where any absolute tolerance would accept a tail that is 100% wrong.
    """
    head = HookHead(body, module)
    with torch.no_grad():
        z = head(x)
        if not isinstance(z, torch.Tensor):
            return False
        ref = body(x)
        a = HookTail(body, module, x.shape[1:], 0.0)(z)
        b = HookTail(body, module, x.shape[1:], 0.5)(z)
    if not all(isinstance(t, torch.Tensor) for t in (ref, a, b)) or a.shape != ref.shape:
        return False
    ref, a, b = ref.double(), a.double(), b.double()
    tol = rtol * float(ref.abs().max()) if ref.numel() else 0.0
    return bool((a - ref).abs().max() <= tol and (a - b).abs().max() <= tol)


def _hook_points(
    model: nn.Module, body: nn.Module, with_shapes: bool, image_size: int | None
) -> list[CutPoint]:
    x = _sample_input(model)
    if image_size:
        x = torch.rand(1, x.shape[1], image_size, image_size, device=x.device)
    normalize = getattr(model, "normalize", None) if body is not model else None
    if normalize is not None:
        x = normalize(x)
    was_training = body.training
    body.eval()
    try:
        points = []
        for name, aliases in _called_once(body, x):
            if _hook_valid(body, name, x):
                shape = tuple(HookHead(body, name)(x).shape[1:]) if with_shapes else None
                points.append(CutPoint(name, len(points), aliases, shape))
    finally:
        body.train(was_training)
    return points


def _hook_cut(model: nn.Module, body: nn.Module, point: str, model_name: str) -> tuple[nn.Module, nn.Module]:
    x = _sample_input(model, batch=2)
    normalize = getattr(model, "normalize", None) if body is not model else None
    if normalize is not None:
        x = normalize(x)
    names = [n for n, _ in body.named_modules() if n]
    if point not in names:
        raise _unknown_point(point, model_name, None, names)
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            called = {n for name, aliases in _called_once(body, x) for n in (name, *aliases)}
            if point not in called:
                raise SplitinvError(
                    f"module {point!r} of {model_name} is not called exactly once in forward: cut elsewhere."
                )
            if not _hook_valid(body, point, x):
                raise SplitinvError(
                    f"cut point {point!r} of {model_name} has other values crossing it (a skip connection "
                    f"around it): cut at a block boundary; see `splitinv layers {model_name}`."
                )
    finally:
        body.train(was_training)
    return HookHead(body, point), HookTail(body, point, x.shape[1:])
