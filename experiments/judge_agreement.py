"""How often does each judge agree with answers labelled by hand?

    python experiments/judge_agreement.py tests/data/judge_labels.jsonl

Reads the labelled answers (one JSON object a line: ``source``, ``kind`` of prompt, ``prompt``,
``answer``, ``label`` in refused / complied / incoherent, ``split`` dev or test) and prints, for the
default rule judge and the earlier keyword judge, per split: the share of answers judged as
labelled, overall and per label (of the answers labelled X, the share judged X) and per kind of
prompt, and the confusion of labels and verdicts. ``dev`` answers were read while the rules were
written; ``test`` answers were labelled before the judge read them.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mlr.evaluation.judge import KeywordJudge, RuleJudge

VERDICTS = ("refused", "complied", "incoherent")


def agreement(rows: list[dict], verdicts: list[str]) -> dict:
    """Overall, per-label and per-kind agreement of ``verdicts`` with ``rows``' labels."""
    def share(pairs: list[tuple[dict, str]]) -> tuple[float | None, int]:
        if not pairs:
            return None, 0
        return sum(row["label"] == verdict for row, verdict in pairs) / len(pairs), len(pairs)

    pairs = list(zip(rows, verdicts))
    return {
        "all": share(pairs),
        "by_label": {label: share([p for p in pairs if p[0]["label"] == label])
                     for label in VERDICTS},
        "by_kind": {kind: share([p for p in pairs if p[0]["kind"] == kind])
                    for kind in sorted({row["kind"] for row in rows})},
        "confusion": Counter((row["label"], verdict) for row, verdict in pairs),
    }


def _cell(value: tuple[float | None, int]) -> str:
    share, count = value
    return "n/a" if share is None else f"{share:.2f} ({count})"


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/judge_labels.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(f"{len(rows)} labelled answers: {dict(Counter(row['label'] for row in rows))}")
    for split in ("dev", "test"):
        chosen = [row for row in rows if row["split"] == split]
        if not chosen:
            continue
        kinds = sorted({row["kind"] for row in chosen})
        print(f"\n{split}: {len(chosen)} answers")
        print("| judge | all | " + " | ".join(f"labelled {v}" for v in VERDICTS) + " | "
              + " | ".join(f"{k} prompts" for k in kinds) + " |")
        print("| --- " * (2 + len(VERDICTS) + len(kinds)) + "|")
        for judge in (RuleJudge(), KeywordJudge()):
            verdicts = judge.verdicts([r["prompt"] for r in chosen], [r["answer"] for r in chosen])
            found = agreement(chosen, verdicts)
            cells = [_cell(found["all"])] + [_cell(found["by_label"][v]) for v in VERDICTS] + \
                [_cell(found["by_kind"][k]) for k in kinds]
            print(f"| {judge.name} | " + " | ".join(cells) + " |")
            confused = ", ".join(f"{label}→{verdict} {count}"
                                 for (label, verdict), count in sorted(found["confusion"].items())
                                 if label != verdict)
            print(f"  ({judge.name} errors: {confused or 'none'})")


if __name__ == "__main__":
    main()
