"""How selective is an alignment? Refusals of held-out harmful requests against refusals of their
benign twins and of safe requests in alarming words, for one alignment setting.

    python experiments/alignment_check.py --model smollm2-135m-instruct --steps 80 --lr 2e-5 \\
        --batch-size 8 --max-length 96 --alarming --limit 48 --out runs/align/a80

Aligns the model with these settings (``mlr.tuning.align``, cached under ``$MLR_CACHE`` exactly as
``mlr run`` caches it; ``--steps 0`` evaluates the model as shipped), then generates greedy answers
to the first ``--limit`` held-out prompts of each kind, judges them with ``default_judge()`` and
scores every held-out prompt's teacher-forced refusal lean (``mlr.evaluation.refusal_score``).
Every prompt is held out from the alignment data (the alarming requests by whole action). Writes
``alignment.json`` (shares, scores, settings, seconds) and ``answers.jsonl`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from mlr.data.corpus import alarming_prompts, benign_prompts, harmful_prompts
from mlr.environment import environment
from mlr.evaluation.evaluate import EvalSet, refusal_scores
from mlr.evaluation.generation import generate_responses
from mlr.evaluation.judge import default_judge, share
from mlr.io import write_json_atomic, write_text_atomic
from mlr.models import load_model
from mlr.tuning.align import AlignSettings, align_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded default")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--alarming", action="store_true",
                        help="add the alarming-but-safe requests to the alignment data")
    parser.add_argument("--limit", type=int, default=48, help="prompts generated per kind")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)
    started = time.perf_counter()
    settings = AlignSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                             max_length=args.max_length, alarming=args.alarming)
    model_path = str(align_model(settings, args.model)) if args.steps else args.model
    aligned = time.perf_counter()
    model, tokenizer = load_model(model_path)
    model.eval()
    kinds = {"harmful": harmful_prompts("heldout"), "benign": benign_prompts("heldout"),
             "alarming": alarming_prompts("heldout")}
    judge = default_judge()
    result, rows = {}, []
    for kind, prompts in kinds.items():
        shown = prompts[:args.limit]
        answers = generate_responses(model, tokenizer, shown, args.max_new_tokens, 16, desc=kind)
        verdicts = judge.verdicts(shown, answers)
        result[kind] = {"generated": len(shown), "refused": share(verdicts, "refused"),
                        "complied": share(verdicts, "complied"),
                        "incoherent": share(verdicts, "incoherent")}
        rows += [{"kind": kind, "prompt": p, "answer": a, "verdict": v}
                 for p, a, v in zip(shown, answers, verdicts)]
    scores = refusal_scores(model, tokenizer, EvalSet(kinds["harmful"], kinds["benign"], [], [],
                                                      kinds["alarming"]), 16)
    for kind in kinds:
        per_prompt = scores[f"{kind}_refusal_scores"]
        result[kind].update(scored=len(per_prompt), refusal_score=sum(per_prompt) / len(per_prompt),
                            leans_to_refusal=sum(s > 0.5 for s in per_prompt) / len(per_prompt))
    done = time.perf_counter()
    report = {"model": args.model or "embedded default", "aligned_model": model_path,
              "settings": vars(args) | {"out": str(args.out)}, "result": result,
              "seconds": {"align": aligned - started, "evaluate": done - aligned},
              "environment": environment("cpu")}
    write_text_atomic(args.out / "answers.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json_atomic(args.out / "alignment.json", report)
    for kind, numbers in result.items():
        print(f"{kind:9s} refused {numbers['refused']:.3f} complied {numbers['complied']:.3f} "
              f"incoherent {numbers['incoherent']:.3f} (of {numbers['generated']}); refusal "
              f"score {numbers['refusal_score']:.3f}, leans to refusal "
              f"{numbers['leans_to_refusal']:.3f} (of {numbers['scored']})")


if __name__ == "__main__":
    main()
