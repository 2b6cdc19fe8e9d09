#!/usr/bin/env bash
# splitinv quickstart: offline, CPU only, a few minutes on 2 cores.
#  1. train a ResNet-18 victim on the Fashion-MNIST subset that ships with splitinv (32 px, 2 epochs);
#  2. attack it with He et al.'s inverse-network (decoder) attack at three cut points, one job each; the
#     victim's activations at all three points are computed in one pass and cached (cache.enabled=true);
#  3. print the table of LPIPS / SSIM / PSNR per cut point.
# Usage: bash experiments/quickstart.sh [OUTPUT_DIR]
set -euo pipefail
OUT=${1:-outputs/quickstart}
mkdir -p "$OUT"

splitinv-train-victim victim=resnet18 victim.image_size=32 data=fashion_mnist_mini trainer.max_epochs=2 \
  checkpoint="$OUT/victim.pt" hydra.run.dir="$OUT/train"

splitinv-run -m victim=resnet18 victim.image_size=32 victim.weights="$OUT/victim.pt" \
  data=fashion_mnist_mini data.n_aux=2000 trainer.max_epochs=3 cut=layer1,layer2,layer3 \
  cache.enabled=true cache.dir="$OUT/cache" cache.points=[layer1,layer2,layer3] \
  logger=csv hydra.sweep.dir="$OUT/sweep"

splitinv table "$OUT/sweep" --rows cut --cols victim --metrics lpips,ssim,psnr,label_agreement
