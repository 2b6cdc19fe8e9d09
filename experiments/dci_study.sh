#!/usr/bin/env bash
# The DCI study (issue #24): train the victim, sweep DCI / rMLE / the decoder over every stage of the head with
# 3 seeds (the trivial baselines are scored in every job), sweep DCI's ablations at one cut, then one table with
# 95 % intervals over seeds and one figure (SSIM against depth) from the sweeps' results.
# Usage: bash experiments/dci_study.sh [OUT] [EXPERIMENT] [extra overrides for every run...]
#   bash experiments/dci_study.sh outputs/dci_study_cpu dci_study_cpu     # the README's run (2-core CPU)
#   bash experiments/dci_study.sh outputs/dci_study_tiny dci_study_tiny   # what the tests run (mechanics)
#   bash experiments/dci_study.sh outputs/dci_study dci_study             # DCI's own defaults (a GPU)
set -euo pipefail
OUT=${1:-outputs/dci_study_cpu}
EXPERIMENT=${2:-dci_study_cpu}
shift $(( $# < 2 ? $# : 2 ))
# the experiment's settings, as composed (victim epochs, ablation cut and synthesis iterations)
read -r EPOCHS DATA IMAGES CHANCE ABLATION_CUT < <(python - "$EXPERIMENT" <<'PY'
import sys
from splitinv.config import compose
s = compose([f"experiment={sys.argv[1]}"]).dci_study
print(s.victim_epochs, s.victim_data, s.victim_images, s.victim_allow_chance, s.ablation_cut)
PY
)
# VICTIM: a checkpoint or `imagenet` (e.g. VICTIM=imagenet ... victim=resnet50 victim.image_size=224
# data=imagefolder data.root=/data/imagenet/val); unset: the victim is trained into $OUT/victim.pt
if [ -z "${VICTIM:-}" ]; then
  VICTIM=$OUT/victim.pt
  [ -f "$VICTIM" ] || splitinv-train-victim victim=resnet18 victim.image_size=32 "data=$DATA" \
    "data.n_aux=$IMAGES" "trainer.max_epochs=$EPOCHS" "allow_chance=$CHANCE" "checkpoint=$VICTIM" \
    "hydra.run.dir=$OUT/victim"
fi
splitinv-run -m "experiment=$EXPERIMENT" "victim.weights=$VICTIM" "hydra.sweep.dir=$OUT/sweep/depth" "$@"
splitinv-run -m "experiment=$EXPERIMENT" "victim.weights=$VICTIM" "hydra.sweep.dir=$OUT/sweep/ablations" \
  "cut=$ABLATION_CUT" "+experiment/dci_setting=dci_nocycle,dci_single,dci_synth,dci_aux" "$@"
python experiments/scripts/dci_study_report.py "$OUT/sweep" --ablation-cut "$ABLATION_CUT" --output "$OUT"
cat "$OUT/table.md"
