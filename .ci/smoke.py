"""Smoke test of an installed splitinv (run by .ci/wheel_smoke.sh with the virtual environment's python,
from a folder outside the checkout, with no PYTHONPATH): every module imports from the installation, every
config group option is listed, and one tiny job of every command runs, He et al.'s victim and published
table included. Exits 1 with one line per failure."""

from __future__ import annotations

import importlib
import importlib.resources
import json
import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("smoke_out").resolve()
PREFIX = Path(sys.prefix).resolve()
failures: list[str] = []
FAST = ["logger=csv", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def command(*args: str, expect: int = 0, shows: str | None = None) -> str:
    """Run an installed console script; check its exit status and (a regex) what it prints."""
    exe = PREFIX / "bin" / args[0]
    start = time.perf_counter()
    proc = subprocess.run([str(exe), *args[1:]], capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    what = f"{' '.join(args)[:140]} ({time.perf_counter() - start:.0f} s)"
    if proc.returncode != expect:
        what += f": exit {proc.returncode}, expected {expect}; last lines: " + " | ".join(
            output.splitlines()[-5:]
        )
    elif shows is not None and not re.search(shows, output):
        what += f": output lacks {shows!r}; last lines: " + " | ".join(output.splitlines()[-5:])
    check(proc.returncode == expect and (shows is None or re.search(shows, output) is not None), what)
    return output


def installed(path: str | None) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(PREFIX)


# 1. every module of the package, imported from the installation (not a checkout, not an editable finder)
import splitinv  # noqa: E402

check(installed(splitinv.__file__), f"splitinv imported from the environment: {splitinv.__file__}")
check(splitinv.__version__ != "0.0.0", f"splitinv version {splitinv.__version__}")
modules = [m.name for m in pkgutil.walk_packages(splitinv.__path__, "splitinv.")]
broken = []
for name in modules:
    try:
        module = importlib.import_module(name)
    except Exception as err:
        broken.append(f"{name}: {type(err).__name__}: {err}")
        continue
    if not installed(getattr(module, "__file__", None)):
        broken.append(f"{name} from {getattr(module, '__file__', None)}")
check(not broken and "splitinv.nets.he2019" in modules, f"{len(modules)} modules import from the environment"
      + (f"; broken: {broken}" if broken else ""))  # fmt: skip

# 2. every option of every config group, as the installed package holds them, listed by the Hydra app (the
# shared bases, attack/_base and _optimize, are inherited, never chosen: --help leaves them out)
conf = importlib.resources.files("splitinv.conf")
options: dict[str, list[str]] = {}
for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")):
    for path in sorted(p for p in group.rglob("*.yaml") if not p.name.startswith("_")):
        rel = Path(str(path)).relative_to(Path(str(group)))
        sub = "/".join((group.name, *rel.parent.parts))
        options.setdefault(sub, []).append(rel.stem)
listing = command("splitinv-run", "--help")
listed = dict(re.findall(r"^([\w/]+): (.*)$", listing, re.M))
missing = [f"{g}={o}" for g, opts in options.items() for o in opts if o not in listed.get(g, "").split(", ")]
check(bool(options) and not missing, f"{sum(map(len, options.values()))} config options in {len(options)} "
      f"groups listed by splitinv-run --help" + (f"; missing: {missing}" if missing else ""))  # fmt: skip

# 3. one tiny job of every command
os.chdir(OUT.parent)
victim = OUT / "victim.pt"
command("splitinv", "--help")
command("splitinv", "doctor", shows=r"splitinv\s+" + re.escape(splitinv.__version__))
command("splitinv", "victims", "--filter", "resnet1", shows="resnet18")
command("splitinv", "layers", "he2019_mnist", shows="ReLU2")
bogus = OUT / "alexnet-owt-7be5be79.pth"
bogus.parent.mkdir(parents=True, exist_ok=True)
bogus.write_bytes(b"not the weights")
command("splitinv", "weights", "import", str(bogus), expect=2, shows="checksum")
command("splitinv-train-victim", "recipe=he2019_mnist", "trainer.max_epochs=1", "data.n_aux=128",
        "allow_chance=true",  # 128 images, one epoch: a smoke test of the command, not a trained network
        f"checkpoint={victim}", f"hydra.run.dir={OUT / 'victim'}", *FAST)  # fmt: skip
command("splitinv-run", "victim=he2019_mnist", f"victim.weights={victim}", "data=mnist_mini", "cut=conv1",
        "attack=decoder", "attack.preset=he2019", "data.n_aux=64", "data.n_eval=4", "trainer.max_epochs=1",
        "utility_test=false", f"hydra.run.dir={OUT / 'runs' / 'conv1'}", *FAST,
        shows=r"he2019_mnist @ conv1")  # fmt: skip
written = OUT / "runs" / "conv1" / "metrics.json"
recorded = json.loads(written.read_text())["versions"]["splitinv"] if written.is_file() else None
check(recorded == splitinv.__version__, f"metrics.json records splitinv {recorded}")
command("splitinv", "table", str(OUT / "runs"), "--published", "he2019", "--rows", "attack+preset",
        "--cols", "cut", "--metrics", "psnr,ssim", shows=r"\| decoder/paper \|")  # fmt: skip
command("splitinv", "plot", str(OUT / "runs"), "--output", str(OUT / "figures"))
command("splitinv", "advise", "he2019_mnist", "--latency-runs", "1", "--warmup", "0", "--output",
        str(OUT / "advise"), shows="ReLU2")  # fmt: skip
command("splitinv-train-defense", "victim=he2019_mnist", f"victim.weights={victim}", "data=mnist_mini",
        "cut=conv1", "defense=nopeek", "data.n_aux=64", "data.n_eval=16", "trainer.max_epochs=1",
        f"checkpoint={OUT / 'defended.pt'}", f"hydra.run.dir={OUT / 'defense'}", *FAST)  # fmt: skip
gan = OUT / "gan"
command("splitinv-train-gan", "data.n_aux=64", "data.channels=1", "gan.nz=16", "gan.ngf=8", "gan.ndf=8",
        "data.batch_size=16", "trainer.max_epochs=1", f"hydra.run.dir={gan}", *FAST)  # fmt: skip
weights = sorted(gan.glob("*.pt"))
check(len(weights) == 1, f"splitinv-train-gan wrote one checkpoint: {weights}")
if weights:
    command("splitinv-gan-invert", f"generator.weights={weights[0]}", "method=encoder", "layer=block1",
            "n_images=4", "encoder.steps=5", "lpips=off", f"hydra.run.dir={OUT / 'gan_invert'}", *FAST,
            shows="block1")  # fmt: skip

if failures:
    print(f"smoke test: {len(failures)} failure(s)", file=sys.stderr)
    sys.exit(1)
print("smoke test: all passed")
