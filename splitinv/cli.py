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


def _gan_layers(args: argparse.Namespace) -> None:
    from splitinv.gans import build_generator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are fine for listing shapes
        generator = build_generator(args.name, weights=args.weights)
    points = generator.describe_cut_points()
    size, spaces = generator.image_size, "/".join(generator.latent_spaces)
    table = Table(title=f"{generator.name} cut points ({size}x{size} output, latent spaces {spaces})")
    for column in ("#", "cut point", "state crossing the cut", "depth"):
        table.add_column(column, justify="right" if column in ("#", "depth") else "left")
    for p in points:
        state = ", ".join(f"{k}: {'x'.join(str(s) for s in shape)}" for k, shape in p.state.items())
        table.add_row(str(p.index), p.name, state, f"{p.index / max(1, len(points) - 1):.2f}")
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


def _audit(args: argparse.Namespace) -> None:
    import torch

    from splitinv.gans import build_generator
    from splitinv.gans.audit import FolderImages, audit, check_fpr, wandb_run
    from splitinv.gans.embed import build_embedder

    check_fpr(args.fpr)
    if (args.generator is None) == (args.samples is None):
        raise SplitinvError(
            "pass either --generator NAME --weights PATH (sample -n images from it) or --samples DIR "
            "(already generated images), not both or neither."
        )
    if args.n < 1:
        raise SplitinvError(f"-n must be at least 1, got {args.n}.")
    train, reference = FolderImages(args.train, "train"), FolderImages(args.reference, "reference")
    samples = FolderImages(args.samples, "samples") if args.samples else None
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = samples or build_generator(args.generator, weights=args.weights)
        embedder = build_embedder(args.embedder, args.embedder_weights, args.victim, args.image_size)
        config = {k: v for k, v in vars(args).items() if k != "func"}
        run = wandb_run(args.output, config) if args.wandb else None
        try:
            report = audit(
                source,
                train,
                reference,
                embedder,
                n=args.n,
                fpr=args.fpr,
                seed=args.seed,
                batch_size=args.batch_size,
                top_k=args.top_k,
                resize=args.resize,
                output_dir=args.output,
                logger=run,
                device=device,
            )
        finally:
            if run is not None:
                run.finish()
    for message in dict.fromkeys(str(w.message).splitlines()[0] for w in caught):
        print(f"splitinv: warning: {message}", file=sys.stderr)
    print(report.summary())
    print("\n".join(f"wrote {path}" for path in report.files.values()))
    if run is not None:
        hint = f" (offline: `wandb sync {run.settings.sync_dir}` uploads it)" if run.offline else ""
        print(f"logged to W&B run {run.name or run.id}{hint}")


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

    p = sub.add_parser("gan-layers", help="list a generator's cut points with the state crossing each")
    p.add_argument("name", help="dcgan, progan, biggan, or a registered generator")
    p.add_argument("--weights", default=None, help="a local weights file or folder; omit for random weights")
    p.add_argument("--width", type=int, default=None, help="table width in characters")
    p.set_defaults(func=_gan_layers)

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

    p = sub.add_parser(
        "audit",
        help="identity membership audit of a GAN (Webster et al. 2021): flag samples copying training images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Embed N generated samples and the training images, find each sample's nearest training images (cosine
similarity) and flag samples above a threshold calibrated on reference images known NOT to be in the
training set (its false-positive rate is --fpr). Writes audit.json, samples.csv and audit.png to --output.

Two uses of the same audit:
  did this GAN train on my images?  --train = one person's (or artist's) images, --reference = similar
                                    images of other people; a match rate well above --fpr says it did.
  is this sample safe to release?   --samples = the images to publish (or --generator to sample them),
                                    --train = the generator's training set; flagged samples copy it.

example: splitinv audit --generator dcgan --weights gan.pt -n 1000 --train train/ --reference heldout/ \\
             --embedder pixels --output audit/""",
    )
    p.add_argument("--generator", default=None, help="generator name (dcgan, progan, biggan, ...)")
    p.add_argument("--weights", default=None, help="the generator's local weights file")
    p.add_argument("-n", type=int, default=1000, help="samples to generate (default 1000)")
    p.add_argument("--samples", default=None, help="instead of --generator: a folder of generated images")
    p.add_argument("--train", required=True, help="folder of training images (or the images in question)")
    p.add_argument("--reference", required=True, help="folder of images known NOT to be in the training set")
    p.add_argument(
        "--embedder",
        default="auto",
        choices=("auto", "facenet", "victim", "pixels"),
        help="auto: facenet with --embedder-weights and no --victim, else victim",
    )
    p.add_argument(
        "--embedder-weights",
        default=None,
        help="facenet: facenet-pytorch's InceptionResnetV1 state_dict; victim: imagenet (default), a "
        "checkpoint, or random",
    )
    p.add_argument("--victim", default=None, help="classifier embedding the images (default resnet18)")
    p.add_argument("--image-size", type=int, default=None, help="embedder input side (default: its own)")
    p.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate (default 0.01)")
    p.add_argument("--top-k", type=int, default=8, help="flagged samples shown in audit.png (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator's latents (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--resize", action="store_true", help="resize train/reference images to the samples' size")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--output", "-o", default="outputs/audit", help="results folder (default outputs/audit)")
    p.add_argument("--wandb", action="store_true", help="log the figure and summary to an offline W&B run")
    p.set_defaults(func=_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SplitinvError as err:
        print(f"splitinv: error: {err}", file=sys.stderr)
        sys.exit(2)
