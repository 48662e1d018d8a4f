"""How often the v1 marker judge agrees with the hand labels (denial vs not denial).

    python experiments/judge_agreement.py

Reads steer/data/judge/labelled.jsonl (rules: docs/labelling.md) and prints the agreement
and the disagreements. The three-way judge of the evaluation suite replaces this check.
"""

import json
from pathlib import Path

from steer.judge import is_refusal

rows = [json.loads(line) for line in (Path(__file__).resolve().parents[1] / "steer/data/judge/labelled.jsonl").open(encoding="utf-8")]
wrong = [r for r in rows if (r["label"] == "denial") != is_refusal(r["response"])]
print(f"marker judge vs hand labels (denial or not): {len(rows) - len(wrong)}/{len(rows)} agree")
for r in wrong:
    print(f"  {r['id']}: label={r['label']} judge={'denial' if is_refusal(r['response']) else 'not denial'}: {r['response'][:90]!r}")
