#!/usr/bin/env bash
# Privacy-utility curves of the defenses on the quickstart victim (offline, CPU): for each defense, one
# multirun of experiment=defense_comparison_cpu over its strengths x cut points (layer1, layer2) x attackers
# (naive, adaptive); NoPeek victims are fine-tuned first with splitinv-train-defense. Then the figure and
# the table. The head's activations are cached once per cut and shared by every defense.
# Usage: bash experiments/defense_comparison.sh VICTIM.pt [OUT] [extra overrides for every run...]
#   e.g. bash experiments/defense_comparison.sh outputs/quickstart/victim.pt outputs/defenses \
#          data.n_aux=2000 trainer.max_epochs=3 data.n_eval=16
# DEFENSE_TRAIN_OVERRIDES: overrides for the NoPeek fine-tunings only (the docs run's CPU-sized variant:
#   DEFENSE_TRAIN_OVERRIDES="data.n_aux=256")
set -euo pipefail
VICTIM=${1:?usage: defense_comparison.sh VICTIM.pt [OUT] [overrides...]}
OUT=${2:-outputs/defenses}
shift $(( $# < 2 ? $# : 2 ))
COMMON=(experiment=defense_comparison_cpu "victim.weights=$VICTIM" "cache.dir=$OUT/cache" "$@")
sweep() { local name=$1; shift; splitinv-run -m "${COMMON[@]}" "$@" "hydra.sweep.dir=$OUT/$name"; }

sweep none defense=none attack.defense_aware=true     # naive = adaptive without a defense
sweep gaussian defense=gaussian defense.relative=true defense.scale=0.25,1,4
sweep dropout defense=dropout defense.p=0.3,0.6,0.9
sweep quantize defense=quantize defense.bits=2,1
sweep topk defense=topk defense.k=0.05,0.01
for cut in layer1 layer2; do
  for weight in 1 4; do
    ckpt="$OUT-training/nopeek_${cut}_w${weight}.pt"  # outside the sweep folder
    [ -f "$ckpt" ] || splitinv-train-defense victim=resnet18 victim.image_size=32 "victim.weights=$VICTIM" \
      data=fashion_mnist_mini cut=$cut defense=nopeek defense.weight=$weight trainer.max_epochs=1 \
      "checkpoint=$ckpt" "hydra.run.dir=$OUT-training/nopeek_${cut}_w${weight}" ${DEFENSE_TRAIN_OVERRIDES:-}
    sweep "nopeek/${cut}_w${weight}" "cut=$cut" "victim.weights=$ckpt" defense=nopeek defense.weight=$weight
  done
done

splitinv plot --privacy-utility "$OUT" --metrics ssim
# accuracy on the data's whole test split (utility_test: 1,000 images of the shipped subset), as docs/defenses.md
# shows, not on the n_eval attacked images (utility)
splitinv table "$OUT" --rows defense_setting --cols cut+attacker --metrics utility_test,ssim
