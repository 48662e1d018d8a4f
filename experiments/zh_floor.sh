#!/usr/bin/env bash
# The judge's floor in Chinese, and the targeted edit under a second decoding protocol (results/zh-floor/).
#   bash experiments/zh_floor.sh [EDITED] [DATA_DIR]
# EDITED is the checkpoint of `python experiments/targeted_embedded.py --dest results/targeted-embedded`
# (runs/targeted); its weights must hash to that run's manifest. Two comparisons on the held-out
# test split, base = the embedded model:
#   greedy/   the controls suite (China questions nobody censors), plain greedy as every committed result;
#   penalty/  censorship, refusal, xstest and controls, greedy with repetition penalty 1.1 on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
EDITED=${1:-runs/targeted}
DATA=${2:-../shared/data}
OUT=results/zh-floor
python - "$EDITED" <<'PY'
import json, sys
from pathlib import Path
from steer.model.load import checkpoint_hash
want = json.loads(Path("results/targeted-embedded/steer_manifest.json").read_text())["output_sha256"]
got = checkpoint_hash(Path(sys.argv[1]))
sys.exit(0 if got == want else f"{sys.argv[1]}: weights hash {got[:12]}..., expected results/targeted-embedded's {want[:12]}...")
PY
common=(--data-dir "$DATA" --batch-size 16 --seed 0 --force)
steer compare embedded "$EDITED" --suite controls "${common[@]}" --out "$OUT/greedy"
steer compare embedded "$EDITED" --suite censorship,refusal,xstest,controls --repetition-penalty 1.1 "${common[@]}" --out "$OUT/penalty"
