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
from typing import NoReturn

from rich.console import Console
from rich.table import Table

from splitinv.errors import SplitinvError, one_line_warnings, os_error_line


def _layers(args: argparse.Namespace) -> None:
    from splitinv.cut import describe_cut_points
    from splitinv.victims import build_victim, check_input_cost

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are fine for listing shapes
        victim = build_victim(args.name, weights=args.weights, image_size=args.image_size)
    check_input_cost(victim, victim.image_size)  # a huge --image-size: refused or announced, not silent
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
    from splitinv.imports import timm_without_wandb
    from splitinv.victims import torchvision_names

    timm = timm_without_wandb()

    names = sorted(timm.list_models(args.filter or "*")) if args.timm else torchvision_names()
    if args.filter and not args.timm:
        names = [n for n in names if args.filter.strip("*") in n]
    print("\n".join(names))


def _table(args: argparse.Namespace) -> None:
    from splitinv.report import collect, published, require_finished, table

    frame = require_finished(collect(args.sweep_dir, trust_edited=args.trust_edited), args.sweep_dir)
    if args.published:
        frame = published(args.published, frame)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    cols = None if args.cols in ("", "none") else args.cols
    text = table(frame, rows=args.rows, cols=cols, metrics=metrics, fmt=args.format, intervals=args.intervals)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")


def _plot(args: argparse.Namespace) -> None:
    from splitinv.report import (
        chance_accuracy,
        collect,
        plot_depth,
        plot_privacy_utility,
        plot_reconstructions,
        require_finished,
    )

    frame = require_finished(collect(args.sweep_dir, trust_edited=args.trust_edited), args.sweep_dir)
    out = Path(args.output or Path(args.sweep_dir) / "figures")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.privacy_utility:
        chance = chance_accuracy(frame, args.sweep_dir)
        paths = [p for m in metrics for p in plot_privacy_utility(frame, out, m, chance)]
    else:
        paths = plot_depth(frame, out, metrics)
        paths += plot_reconstructions(frame, args.sweep_dir, out, n=args.images)
    print("\n".join(f"wrote {p}" for p in paths))


def _audit(args: argparse.Namespace) -> None:
    import torch

    from splitinv.audit import FolderImages, audit, build_embedder, check_fpr, wandb_run
    from splitinv.audit.faces import build_aligner
    from splitinv.audit.membership import MECHANICS
    from splitinv.gans import build_generator

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
        # face crops for the face recogniser (auto); the generic embedders see whole images
        detector = args.faces if args.faces != "auto" else ("haar" if embedder.kind == "facenet" else "none")
        faces = build_aligner(detector, embedder.input_size or 160)
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
                faces=faces,
                mechanics_test=args.mechanics_test,
            )
        finally:
            if run is not None:
                run.finish()
    label = f"{MECHANICS}: " if report.mechanics_test else ""
    for message in dict.fromkeys(str(w.message).splitlines()[0] for w in caught):
        print(f"splitinv: warning: {label}{message}", file=sys.stderr)
    print(report.summary())
    print("\n".join(f"{label}wrote {path}" for path in report.files.values()))
    if run is not None:
        hint = f" (offline: `wandb sync {run.settings.sync_dir}` uploads it)" if run.offline else ""
        print(f"logged to W&B run {run.name or run.id}{hint}")


def _advise(args: argparse.Namespace) -> None:
    from splitinv import advise as adv

    sweep, victim = args.sweep, args.victim
    if args.target is not None:
        if Path(args.target).is_dir():
            if sweep is not None and Path(sweep).resolve() != Path(args.target).resolve():
                raise SplitinvError(f"two sweep folders given ({args.target} and --sweep {sweep}): pass one.")
            sweep = args.target
        elif Path(args.target).exists() or (
            "/" in args.target and not args.target.startswith(("timm/", "torchvision/", "tv/"))
        ):
            raise SplitinvError(f"{args.target} is not a folder: pass a sweep folder or a victim name.")
        elif victim is not None and victim != args.target:
            raise SplitinvError(f"{args.target!r} is not a folder, and --victim {victim} names the victim.")
        else:
            victim = args.target
    constraints = adv.check_constraints({name: getattr(args, name) for name in adv.CONSTRAINTS})
    rates = {"device_gflops": args.device_gflops, "uplink_mbps": args.uplink_mbps}
    rates["server_gflops"] = args.server_gflops
    profile = None
    if args.profile:
        profile = adv.load_profile(args.profile, args.profiles, **rates)
    elif any(v is not None for v in rates.values()):
        profile = adv.DeviceProfile("custom", **rates)
    if args.latency_runs < 1 or args.warmup < 0:
        raise SplitinvError("--latency-runs must be at least 1 and --warmup at least 0.")
    if "max_e2e_ms" in constraints and profile is None:
        raise SplitinvError("--max-e2e-ms needs a device profile: --profile NAME, or --uplink-mbps ...")
    default_out = Path(sweep) / "advise" if sweep and not args.run else Path("outputs/advise")
    output = Path(args.output) if args.output else default_out
    if args.run:
        if sweep is not None:
            raise SplitinvError(f"--run writes its own sweep (into {output}/sweep): drop {sweep} or --run.")
        sweep = output / "sweep"
        attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
        command = adv.sweep_command(
            sweep,
            victim=victim,
            image_size=args.image_size,
            weights=args.weights,
            cuts=args.cuts,
            attacks=attacks,
            experiment=args.experiment,
            launcher=args.launcher,
            overrides=args.set or [],
        )
        print(f"running the sweep (log: {output / 'sweep.log'}): {' '.join(command)}", flush=True)
        adv.run_sweep(command, output / "sweep.log")
    elif args.attacks or args.experiment or args.set or args.launcher:
        raise SplitinvError("--attacks, --experiment, --set and --launcher shape --run's sweep: add --run.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = adv.advise(
            sweep,
            victim,
            image_size=args.image_size,
            cuts=args.cuts,
            profile=profile,
            wire=args.wire,
            latency_runs=args.latency_runs,
            warmup=args.warmup,
            method=args.method,
            attacked_only=args.attacked_only,
            trust_edited=args.trust_edited,
            **({} if args.jpeg_quality is None else {"jpeg_quality": args.jpeg_quality}),
        )
    ours = [w for w in caught if "splitinv" in Path(w.filename).parts]  # not the libraries' deprecations
    for message in dict.fromkeys(str(w.message).splitlines()[0] for w in ours):
        print(f"splitinv: warning: {message}", file=sys.stderr)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, suffix in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
        path = output / f"advise.{suffix}"
        path.write_text(adv.render(table, fmt))
        written.append(path)
    print(adv.render(table, args.format), end="")
    if table["attacked"].any():
        written += adv.plot(table, output)
    else:
        print("no leakage rows (no sweep, or none at these cut points): costs only, no figure.")
    if constraints:
        print()
        print(adv.constrain(table, constraints).summary())
    print("\n".join(f"wrote {path}" for path in written))


def _doctor(args: argparse.Namespace) -> None:
    from splitinv.doctor import main as doctor

    sys.exit(doctor())


def _weights(args: argparse.Namespace) -> None:
    from splitinv.weights import import_weights

    for item in import_weights(args.files, timm_model=args.timm, sha256=args.sha256):
        state = "already there" if item.unchanged else "copied"
        print(f"{item.source} -> {item.target}: {item.what}, sha256 {item.sha256[:12]}..., {state}")


TRUST_EDITED = (
    "read metrics.json files changed after splitinv wrote them (a deliberate edit) instead of refusing"
)


def _positive_int(text: str) -> int:
    """argparse type: a positive integer (an image side, a count), else argparse's one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line reported in one line (no usage block) like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="splitinv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("layers", help="list a victim's valid cut points with their output shapes")
    p.add_argument("name", help="torchvision or timm model name, e.g. resnet18, deit_small_patch16_224")
    p.add_argument(
        "--image-size", type=_positive_int, default=None, help="input side in pixels (default: the model's)"
    )
    p.add_argument("--weights", default=None, help="imagenet, a checkpoint path, or omit for random weights")
    p.add_argument("--method", default="auto", choices=("auto", "fx", "hooks"), help="how to cut the model")
    p.add_argument("--width", type=int, default=None, help="table width in characters")
    p.set_defaults(func=_layers)

    p = sub.add_parser("gan-layers", help="list a generator's cut points with the state crossing each")
    p.add_argument("name", help="dcgan, progan, biggan, or a registered generator")
    p.add_argument("--weights", default=None, help="a local weights file or folder; omit for random weights")
    p.add_argument("--width", type=int, default=None, help="table width in characters")
    p.set_defaults(func=_gan_layers)

    p = sub.add_parser(
        "doctor",
        help="the environment, the torch build, cached LPIPS and pretrained weights, what is missing",
    )
    p.set_defaults(func=_doctor)

    p = sub.add_parser("weights", help="pretrained weights brought from another machine")
    wsub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = wsub.add_parser(
        "import",
        help="copy weight files into the caches torchvision, LPIPS and timm read, checksums checked",
        description="Copy weight files into the caches splitinv reads them from: torchvision's files (the "
        "LPIPS backbones alexnet-owt-7be5be79.pth and vgg16-397923af.pth among them) into "
        "$TORCH_HOME/hub/checkpoints, checked against the checksum in their published name; a timm "
        "checkpoint (--timm MODEL) into the Hugging Face cache, checked to fit the model.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="weight files (torchvision's, under any name)")
    p.add_argument(
        "--timm", default=None, metavar="MODEL", help="the timm model of FILE, e.g. resnet50.a1_in1k"
    )
    p.add_argument(
        "--sha256", default=None, help="with --timm: the checksum on the model's Hugging Face page"
    )
    p.set_defaults(func=_weights)

    p = sub.add_parser("victims", help="list the victim names build_victim accepts")
    p.add_argument("--timm", action="store_true", help="list timm's models instead of torchvision's")
    p.add_argument("--filter", default=None, help="substring (torchvision) or wildcard (timm), e.g. 'vit*'")
    p.set_defaults(func=_victims)

    p = sub.add_parser("table", help="gather a sweep's metrics.json files into a table")
    p.add_argument("sweep_dir", help="a run or sweep folder written by splitinv-run")
    p.add_argument("--rows", default="cut", help="key for rows (cut, victim, attack, data, weights, ...)")
    p.add_argument("--cols", default="victim", help="key for column groups, or 'none'")
    p.add_argument(
        "--metrics", default="lpips,ssim,psnr", help=f"comma-separated metric names: {TABLE_METRICS}"
    )
    p.add_argument("--format", default="md", choices=("md", "latex", "csv"))
    p.add_argument(
        "--intervals",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each number's 95 %% interval and the n column (default); --no-intervals: the means alone",
    )
    p.add_argument("--output", "-o", default=None, help="write to this file instead of printing")
    p.add_argument(
        "--published",
        default=None,
        metavar="PAPER",
        help="add a paper's published numbers as rows with preset 'paper' (he2019: He et al., ACSAC 2019)",
    )
    p.add_argument("--trust-edited", action="store_true", help=TRUST_EDITED)
    p.set_defaults(func=_table)

    p = sub.add_parser("plot", help="figures of a sweep: quality against cut depth, reconstructions per cut")
    p.add_argument("sweep_dir", help="a sweep folder written by splitinv-run -m")
    p.add_argument("--metrics", default="lpips,ssim,psnr", help="comma-separated metric names")
    p.add_argument(
        "--images", type=int, default=8, help="evaluation images per row of the reconstruction grid"
    )
    p.add_argument("--output", "-o", default=None, help="folder for the figures (default: SWEEP_DIR/figures)")
    p.add_argument(
        "--privacy-utility",
        action="store_true",
        help="privacy-utility curves instead: the defended split's accuracy against each --metrics value, "
        "one panel per cut point, one curve per defense, naive and adaptive attackers apart",
    )
    p.add_argument("--trust-edited", action="store_true", help=TRUST_EDITED)
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
    p.add_argument(
        "--image-size", type=_positive_int, default=None, help="embedder input side (default: its own)"
    )
    p.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate (default 0.01)")
    p.add_argument("--top-k", type=int, default=8, help="flagged samples shown in audit.png (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator's latents (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--resize", action="store_true", help="resize train/reference images to the samples' size")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--output", "-o", default="outputs/audit", help="results folder (default outputs/audit)")
    p.add_argument("--wandb", action="store_true", help="log the figure and summary to an offline W&B run")
    p.add_argument(
        "--faces",
        default="auto",
        choices=("auto", "haar", "none"),
        help="face detection and alignment before embedding: haar (OpenCV's cascades, offline), none (whole "
        "images); auto: haar for facenet, none for the victim and pixel embedders",
    )
    p.add_argument(
        "--mechanics-test",
        action="store_true",
        help="allow an embedder with random weights (refused otherwise) and label every output line a "
        "mechanics test: no identity or match-rate claim",
    )
    p.set_defaults(func=_audit)

    p = sub.add_parser(
        "advise",
        help="where to split: device cost, bytes, leakage, utility per cut point; the Pareto-optimal cuts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
One row per cut point of a victim (and per defense a sweep ran there): the device side's FLOPs, parameters,
peak activation memory and measured latency (batch 1, this machine); the bytes crossing the cut at fp32,
fp16 and int8 and what the defense sends; with a device profile, the estimated end-to-end latency; from a
sweep, the strongest attack's SSIM (mean and 95 % interval over seeds) / LPIPS, its verdict against the grey
and 4x4 low-pass images, how many attacks were scored there, and the utility. Two reference rows: 'image'
(send the image) and 'device' (run everything on the device). Cuts that no other cut beats in all of (device
FLOPs, bytes sent, SSIM, utility) are marked Pareto-optimal; with a profile and --max-ssim, the cuts under
the cap are ranked by estimated end-to-end latency.
Writes advise.md, advise.tex, advise.csv and advise_pareto.png / .pdf into --output.

examples:
  splitinv advise multirun/sweep --max-ssim 0.3 --max-device-mflops 50 --profile phone
  splitinv advise resnet18 --image-size 32 --run --attacks decoder,rmle --set data=fashion_mnist_mini \\
      --set logger=csv --output outputs/advise
  splitinv advise --run --experiment split_advisor_cpu --output outputs/advise""",
    )
    p.add_argument("target", nargs="?", default=None, help="a sweep folder (splitinv-run -m), or a victim")
    p.add_argument("--sweep", default=None, help="the sweep folder (leakage and utility rows)")
    p.add_argument("--victim", default=None, help="victim name (default: the sweep's)")
    p.add_argument(
        "--image-size", type=_positive_int, default=None, help="input side in pixels (default: the sweep's)"
    )
    p.add_argument("--weights", default=None, help="with --run: the victim's weights (costs ignore them)")
    p.add_argument(
        "--cuts",
        default=None,
        help="cut points listed: all (default), stages, every:K or a,b,c; with --run also the ones attacked "
        "(default there: stages, or the experiment's)",
    )
    p.add_argument("--attacked-only", action="store_true", help="list only cut points with a leakage run")
    p.add_argument("--method", default="auto", choices=("auto", "fx", "hooks"), help="how to cut the model")
    p.add_argument("--run", action="store_true", help="first run the sweep (splitinv-run -m) in OUTPUT/sweep")
    p.add_argument("--attacks", default=None, help="with --run: comma-separated attacks, e.g. decoder,rmle")
    p.add_argument("--experiment", default=None, help="with --run: an experiment, e.g. split_advisor_cpu")
    p.add_argument("--launcher", default=None, help="with --run: a Hydra launcher (parallel, slurm, ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --run: an override (repeatable)")
    rates = (
        ("--device-gflops", "device speed, GFLOP/s sustained (default: the latency measured here)"),
        ("--uplink-mbps", "uplink, Mbit/s"),
        ("--server-gflops", "server speed, GFLOP/s (default: server time omitted)"),
    )
    for flag, text in rates:
        p.add_argument(flag, type=float, default=None, help=text)
    p.add_argument("--profile", default=None, help="a named device profile: phone, phone-wifi, iot, edge-gpu")
    p.add_argument("--profiles", default=None, help="a YAML file of profiles (default: splitinv's, rough)")
    budgets = (
        ("--max-ssim", "leakage: the upper end of the strongest attack's 95 %% SSIM interval at most this"),
        ("--min-lpips", "leakage: the strongest attack's LPIPS at least this"),
        ("--max-dfil", "leakage bound: dFIL (Fisher information per pixel) of a noisy defense at most this"),
        ("--max-device-mflops", "device MFLOPs per image"),
        ("--max-payload-kb", "KiB (1024 bytes) sent per image"),
        ("--min-utility", "accuracy (or agreement) of the split, in [0, 1]"),
        ("--max-latency-ms", "device latency measured here, ms"),
        ("--max-e2e-ms", "estimated end-to-end latency, ms (needs a profile)"),
    )
    for flag, text in budgets:
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), type=float, default=None, help=text)
    p.add_argument("--wire", default="fp32", choices=("fp32", "fp16", "int8"), help="precision sent")
    p.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        help="JPEG quality of the 'image' row's size (default: splitinv.advise.JPEG_QUALITY)",
    )
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per cut point (median; 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing (default 3)")
    p.add_argument("--format", default="md", choices=("md", "latex", "csv"), help="what to print")
    p.add_argument("--output", "-o", default=None, help="folder for tables and figure (default SWEEP/advise)")
    p.add_argument("--trust-edited", action="store_true", help=TRUST_EDITED)
    p.set_defaults(func=_advise)
    return parser


# what `splitinv table --metrics` accepts (splitinv.report.DIRECTIONS; written out here so that `--help` needs
# no torch import; tests/test_report.py checks the two agree)
TABLE_METRICS = (
    "psnr, ssim, lpips, recognisable, feature_error, label_agreement, accuracy_hat, evaluator_agreement, "
    "state_error_h, state_error_cond, utility, utility_agreement, utility_test, beats_lowpass4, beats_grey, "
    "dfil_mean, dfil_min, psnr_ceiling, and the trivial baselines' scores as <baseline>_<metric> with "
    "baseline grey, mean, lowpass4, lowpass8 and metric ssim, psnr, lpips (e.g. lowpass4_ssim)"
)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    one_line_warnings("splitinv")
    try:
        args.func(args)
    except SplitinvError as err:
        print(f"splitinv: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # an unwritable --output, a full disk: one line, not a traceback
        print(f"splitinv: error: {os_error_line(err)}", file=sys.stderr)
        sys.exit(2)
    finally:
        warnings.showwarning = shown
