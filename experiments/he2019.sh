#!/usr/bin/env bash
# He et al. (ACSAC 2019) reproduced: train their network with their code's recipe, run the sweep (the paper's
# cut points x rMLE / inverse network with same-distribution and random auxiliary data x the paper's settings
# / splitinv's defaults), then one table with the published numbers beside ours.
# Usage: bash experiments/he2019.sh [OUT] [EXPERIMENT] [extra overrides for every run...]
#   bash experiments/he2019.sh outputs/he2019                           # MNIST, offline (about 1 h on 2 cores)
#   bash experiments/he2019.sh outputs/he2019_cpu he2019_mnist_cpu      # tiny budgets (about 2 min)
#   bash experiments/he2019.sh outputs/he2019_cifar he2019_cifar        # CIFAR-10 (downloads it; GPU advised)
set -euo pipefail
OUT=${1:-outputs/he2019}
EXPERIMENT=${2:-he2019_mnist}
shift $(( $# < 2 ? $# : 2 ))
case "$EXPERIMENT" in
  he2019_cifar*) RECIPE=he2019_cifar ;;
  *) RECIPE=he2019_mnist ;;
esac
VICTIM="$OUT/victim.pt"
# VICTIM_EPOCHS: fewer epochs than the recipe's (the tests' CPU-sized run)
[ -f "$VICTIM" ] || splitinv-train-victim "recipe=$RECIPE" "checkpoint=$VICTIM" \
  "hydra.run.dir=$OUT/victim" ${VICTIM_EPOCHS:+trainer.max_epochs=$VICTIM_EPOCHS}
splitinv-run -m "experiment=$EXPERIMENT" "victim.weights=$VICTIM" "hydra.sweep.dir=$OUT/sweep" "$@"
splitinv table "$OUT/sweep" --published he2019 --rows attack+aux_data+preset --cols cut \
  --metrics psnr,ssim,beats_lowpass4 --output "$OUT/table.md"
cat "$OUT/table.md"
