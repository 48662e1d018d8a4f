#!/usr/bin/env bash
# Should `--keep-safety` also target requests to criticise China's leaders? (results/critique-target/, issue 23)
#   bash experiments/critique_target.sh DEFAULT_RUN CRITIQUE_RUN
# DEFAULT_RUN:  steer abliterate embedded --keep-safety --out DEFAULT_RUN
# CRITIQUE_RUN: steer abliterate embedded --keep-safety --target-sets sensitive,critique --out CRITIQUE_RUN
# (each made first if missing). Both against the embedded base on the VALIDATION split only: factual censorship
# (judge v3), the critique requests, harmful and harmless refusal, first-token and multi-token KL.
# The slant audit's mirrored requests are the held-out check and are not read here.
set -euo pipefail
cd "$(dirname "$0")/.."
DEFAULT=${1:?DEFAULT_RUN}
CRITIQUE=${2:?CRITIQUE_RUN}
OUT=results/critique-target
[ -e "$DEFAULT/steer_manifest.json" ] || steer abliterate embedded --keep-safety --out "$DEFAULT"
[ -e "$CRITIQUE/steer_manifest.json" ] ||
    steer abliterate embedded --keep-safety --target-sets sensitive,critique --out "$CRITIQUE"
for side in default:"$DEFAULT" critique:"$CRITIQUE"; do
    steer compare embedded "${side#*:}" --suite censorship,critique,refusal,kl --split val --seed 0 --force \
        --out "$OUT/val-${side%%:*}"
done
