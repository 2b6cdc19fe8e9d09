#!/usr/bin/env bash
# The package as users install it, not the checkout: build the sdist and, from it, the wheel; check that the
# wheel holds every tracked file under splitinv/ and conf/; install it into a fresh virtual environment
# outside the checkout (torch and the other dependencies from this Python's site-packages, splitinv from the
# wheel alone) and run .ci/smoke.py there with a clean environment (no PYTHONPATH, another folder).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/splitinv-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

python -m build --outdir "$work/dist" "$repo" > "$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log"; echo "wheel_smoke: the build failed"; exit 1; }
wheel=$(ls "$work"/dist/*.whl)
python "$repo/.ci/wheel_contents.py" "$repo" "$wheel"

python -m venv --system-site-packages "$work/venv"
# torch and the other dependencies come from this Python's site-packages, also where this Python is itself a
# virtual environment (whose packages --system-site-packages does not reach): a .pth file adds them after the
# new environment's own site-packages, so splitinv is found in the wheel's copy first (smoke.py checks where).
purelib=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python - > "$purelib/_splitinv_smoke_deps.pth" <<'PY'
import os, site
dirs = [d for d in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(d)]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))
PY
"$work/venv/bin/pip" install --quiet --no-deps --no-index "$wheel"
cp "$repo/.ci/smoke.py" "$work/smoke.py"
mkdir -p "$work/home"
cd "$work"
env -i PATH="$work/venv/bin:/usr/local/bin:/usr/bin:/bin" HOME="$work/home" LANG=C.UTF-8 \
  WANDB_MODE=offline OMP_NUM_THREADS=2 "$work/venv/bin/python" smoke.py
