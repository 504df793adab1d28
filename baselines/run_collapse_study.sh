#!/usr/bin/env bash
# Issue 24's pre-registered study (baselines/preregistration.md): base, GRPO and SDSD on the
# `collapse` preset at the selected settings, training seeds 0-4, on task seeds 0, 1, 2 one after
# the other, then the pooled table with task-level intervals and the primary family (Holm).
# Each task seed reuses the base the selection trained (`mitigate pretrain --preset collapse
# --set task.seed=T`, what `reproduce` itself would build); an interrupted task seed resumes.
#   bash baselines/run_collapse_study.sh [ROOT]        # ROOT defaults to runs/collapse_study
set -euo pipefail
ROOT=${1:-runs/collapse_study}
MITIGATE=${MITIGATE:-.venv/bin/mitigate}
mkdir -p "$ROOT"
for T in 0 1 2; do
  OUT="$ROOT/t$T"
  if [ -f "$OUT/summary.json" ]; then echo "task seed $T: done"; continue; fi
  RESUME=(); [ -d "$OUT.partial" ] && RESUME=(--resume)
  BASE=runs/collapse_sel/base_t$T
  [ -d "$BASE" ] || { "$MITIGATE" pretrain --preset collapse --set task.seed=$T --out "$BASE"; }
  "$MITIGATE" reproduce --preset collapse --set task.seed=$T --set 'reproduce.methods=[base, grpo, sdsd]' \
    --base "$BASE" --out "$OUT" --jobs 2 "${RESUME[@]}"
done
"$MITIGATE" table --pool-tasks "$ROOT/t0" "$ROOT/t1" "$ROOT/t2" --out "$ROOT/pooled"
