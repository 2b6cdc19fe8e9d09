#!/usr/bin/env bash
# The GPU check of #20, one prepared script: on one CUDA GPU, at 224 px in bf16,
#   1. the scale benchmark (ResNet-50 cut at layer2, n_eval 256 / 1,024 / 4,096: peak RSS, time per image,
#      one activation cache for every n_eval),
#   2. decoder training (ResNet-50 layer2, 1,024 auxiliary photos, 300 steps) and
#   3. rMLE (ResNet-50 layer1, 16 images, 500 steps),
# printing the GPU's name first and each part's wall time. About 5 minutes on an H100; needs no network
# (random-weight victims: time and memory do not depend on the weights) and nothing but the pip install.
#
#   bash experiments/benchmarks/gpu.sh [OUT]        # OUT: default outputs/gpu_check
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-outputs/gpu_check}
mkdir -p "$out"
python - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu.sh: no CUDA GPU visible (torch.cuda.is_available() is False): run it on a GPU node.")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}")
PY
start=$SECONDS
python experiments/benchmarks/scale.py --parts scale --device cuda --precision bf16-mixed --threads 0 \
  --victim resnet50 --cut layer2 --width 64 --steps 20 --n-eval 256,1024,4096 --n-aux 1024 --batch-size 128 \
  --workers 8 --work "$out/scale"
echo "scale benchmark: $((SECONDS - start)) s"

photos="$out/scale/photos"
common=(victim=resnet50 victim.image_size=224 data=imagefolder "data.root=$photos/aux" "data.eval_root=$photos/eval"
        data.num_workers=8 trainer=gpu trainer.precision=bf16-mixed logger=csv lpips=off)
start=$SECONDS
splitinv-run "${common[@]}" cut=layer2 data.n_eval=256 data.batch_size=128 trainer.max_steps=300 \
  trainer.max_epochs=-1 "hydra.run.dir=$out/decoder"
echo "decoder, 300 steps at 224 px: $((SECONDS - start)) s"

start=$SECONDS
splitinv-run "${common[@]}" cut=layer1 attack=rmle attack.steps=500 data.n_eval=16 data.batch_size=16 \
  "hydra.run.dir=$out/rmle"
echo "rMLE, 16 images x 500 steps at 224 px: $((SECONDS - start)) s"
splitinv table "$out" --rows attack --cols cut --metrics ssim,psnr
