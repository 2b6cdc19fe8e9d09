"""``splitinv``: small commands around the library (list victims and cut points, build tables).

Runs themselves go through ``splitinv-run`` (the Hydra app). Every bad input ends with one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splitinv.errors import SplitinvError


def _layers(args: argparse.Namespace) -> None:
    from splitinv.cut import describe_cut_points
    from splitinv.victims import build_victim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are fine for listing shapes
        victim = build_victim(args.name, weights=args.weights, image_size=args.image_size)
    points = describe_cut_points(victim, method=args.method, image_size=victim.image_size)
    table = Table(title=f"{victim.name} cut points ({victim.image_size}x{victim.image_size} input)")
    for column in ("#", "cut point", "output shape", "depth", "also accepted as"):
        table.add_column(column, justify="right" if column in ("#", "depth") else "left")
    for p in points:
        shape = "x".join(str(s) for s in p.shape) if p.shape else "?"
        depth = f"{p.index / max(1, len(points) - 1):.2f}"
        table.add_row(str(p.index), p.name, shape, depth, ", ".join(p.aliases))
    Console(width=args.width).print(table)


def _victims(args: argparse.Namespace) -> None:
    import timm

    from splitinv.victims import torchvision_names

    names = sorted(timm.list_models(args.filter or "*")) if args.timm else torchvision_names()
    if args.filter and not args.timm:
        names = [n for n in names if args.filter.strip("*") in n]
    print("\n".join(names))


def _table(args: argparse.Namespace) -> None:
    from splitinv.report import collect, table

    frame = collect(args.sweep_dir)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    cols = None if args.cols in ("", "none") else args.cols
    text = table(frame, rows=args.rows, cols=cols, metrics=metrics, fmt=args.format)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")


def _plot(args: argparse.Namespace) -> None:
    from splitinv.report import collect, plot_depth, plot_reconstructions

    frame = collect(args.sweep_dir)
    out = Path(args.output or Path(args.sweep_dir) / "figures")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    paths = plot_depth(frame, out, metrics) + plot_reconstructions(frame, args.sweep_dir, out, n=args.images)
    print("\n".join(f"wrote {p}" for p in paths))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitinv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="list a victim's valid cut points with their output shapes")
    p.add_argument("name", help="torchvision or timm model name, e.g. resnet18, deit_small_patch16_224")
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the model's)")
    p.add_argument("--weights", default=None, help="imagenet, a checkpoint path, or omit for random weights")
    p.add_argument("--method", default="auto", choices=("auto", "fx", "hooks"), help="how to cut the model")
    p.add_argument("--width", type=int, default=None, help="table width in characters")
    p.set_defaults(func=_layers)

    p = sub.add_parser("victims", help="list the victim names build_victim accepts")
    p.add_argument("--timm", action="store_true", help="list timm's models instead of torchvision's")
    p.add_argument("--filter", default=None, help="substring (torchvision) or wildcard (timm), e.g. 'vit*'")
    p.set_defaults(func=_victims)

    p = sub.add_parser("table", help="gather a sweep's metrics.json files into a table")
    p.add_argument("sweep_dir", help="a run or sweep folder written by splitinv-run")
    p.add_argument("--rows", default="cut", help="key for rows (cut, victim, attack, data, weights, ...)")
    p.add_argument("--cols", default="victim", help="key for column groups, or 'none'")
    p.add_argument("--metrics", default="lpips,ssim,psnr", help="comma-separated metric names")
    p.add_argument("--format", default="md", choices=("md", "latex", "csv"))
    p.add_argument("--output", "-o", default=None, help="write to this file instead of printing")
    p.set_defaults(func=_table)

    p = sub.add_parser("plot", help="figures of a sweep: quality against cut depth, reconstructions per cut")
    p.add_argument("sweep_dir", help="a sweep folder written by splitinv-run -m")
    p.add_argument("--metrics", default="lpips,ssim,psnr", help="comma-separated metric names")
    p.add_argument(
        "--images", type=int, default=8, help="evaluation images per row of the reconstruction grid"
    )
    p.add_argument("--output", "-o", default=None, help="folder for the figures (default: SWEEP_DIR/figures)")
    p.set_defaults(func=_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SplitinvError as err:
        print(f"splitinv: error: {err}", file=sys.stderr)
        sys.exit(2)
