"""Is ML-LR more than a lower learning rate? Safety against usability, arm by arm, on one base model.

    python experiments/lr_frontier.py --analysis runs/default --out runs/frontier \\
        --uniform 1,0.8,0.6,0.4 --ml-lr 0.6,0.3,0.1 --random-sets 2 --seeds 3

``--analysis`` is the ``--out`` of an ``mlr run`` (or ``mlr search``) on the same base model: its
``probe.json`` and ``mods_robust.json`` are used as they are. Every arm fine-tunes with the same
data, steps, seeds and evaluation as ``mlr run`` (its defaults, or the options below):

* ``uniform-M``: every module at base × M (M = 1 is vanilla fine-tuning), the plain-LR frontier;
* ``ml_lr-R``: Mods_Robust at the base LR, every other module at base × R;
* ``random<K>-R``: as ``ml_lr-R`` with Mods_Robust replaced by K-th random set of as many modules
  (drawn with a fixed seed): does the proxy's choice matter, or only how much trains slower?
* ``--extra NAME=R:SOURCE`` (repeatable): the set SOURCE at the base LR, every other module at
  base × R. SOURCE is a mods_robust file, ``all`` (every decoder module: only embeddings and norms
  train slower), ``complement`` (every decoder module *not* in Mods_Robust: the proxy reversed) or
  ``topF`` (e.g. ``top0.25``: the map's most robust modules, in the search's order, holding up to a
  share F of the decoder module parameters, without the search's joint criterion: a Mods_Robust
  as large as asked).

With ``--reuse-arms`` the ``mlr run`` in ``--analysis`` supplies the points it already trained with
the same settings (its ``vanilla`` is ``uniform-1``, its ``uniform_lr`` and ``ml_lr`` are
``uniform-R`` and ``ml_lr-R`` at its ratio R, and its peer defenses ``sppft`` and ``safeinstr``
and its ``swat`` are points of their own); the settings are checked against its report.json.
It reads only that report.json and each arm's ``eval.json`` and ``answers.jsonl``, never the
fine-tuned weights, which ``mlr run`` deletes once evaluated (unless ``--keep-models``); the
sweep's own arms are handled the same way (``run_arm_jobs``), and a killed sweep resumes as
``mlr run`` does.

ML-LR helps beyond a lower learning rate only if its points lie below the uniform curve: a lower
ASR at the same held-out loss. Each non-uniform arm gets ``gap_to_uniform_curve``: its ASR minus
the uniform curve's at its loss, seed by seed, with a 95 % interval. Writes ``frontier.json`` and
``frontier.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch
from mlr.analysis.probe import ProbeResult
from mlr.analysis.robustness import RobustnessMap
from mlr.analysis.search import rank_modules
from mlr.evaluation.evaluate import EVAL_FILE, read_outcomes
from mlr.evaluation.intervals import Difference, mean_difference
from mlr.evaluation.report import summarize_arm
from mlr.io import save_figure_atomic, write_json_atomic
from mlr.models import load_model
from mlr.modules import decoder_modules
from mlr.run.arms import ArmContext, ArmJob, run_arm_jobs
from mlr.run.config import EMBEDDED_NAME, RunConfig
from mlr.run.data import run_data
from mlr.run.pipeline import resolve_defaults
from mlr.tuning.align import align_model
from mlr.tuning.ml_lr import read_mods_robust


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def write_set(path: Path, modules: list[str], how: str) -> Path:
    write_json_atomic(path, {"modules": sorted(modules), "made": how})
    return path


def random_sets(names: list[str], robust: list[str], count: int, out: Path) -> list[Path]:
    """``count`` random module sets of Mods_Robust's size, written as mods_robust files."""
    rng = random.Random(0)
    return [write_set(out / f"random{k}_modules.json", rng.sample(names, len(robust)),
                      f"random.Random(0), set {k}") for k in range(count)]


def top_share(rmap: RobustnessMap, share: float) -> list[str]:
    """The map's most robust measured modules, in the search's order, while they hold at most
    ``share`` of the parameters of all mapped-type modules (measured or not)."""
    total = sum(module.params for module in rmap.modules)
    chosen, params = [], 0
    for module in rank_modules(rmap.modules):
        if params + module.params > share * total:
            break
        chosen.append(module.name)
        params += module.params
    return chosen


def extra_arm(spec: str, names: list[str], robust: list[str], out: Path,
              rmap: RobustnessMap) -> tuple[str, float, Path]:
    """``NAME=RATIO:SOURCE`` as an arm (see the module docstring)."""
    name, _, rest = spec.partition("=")
    ratio, _, source = rest.partition(":")
    top = re.fullmatch(r"top(\d*\.?\d+)", source)
    if top:
        share = float(top.group(1))
        path = write_set(out / f"{name}_modules.json", top_share(rmap, share),
                         f"the map's most robust modules holding <= {share:.0%} of the parameters")
    elif source == "all":
        path = write_set(out / f"{name}_modules.json", names, "every decoder module")
    elif source == "complement":
        path = write_set(out / f"{name}_modules.json", sorted(set(names) - set(robust)),
                         "the decoder modules not in Mods_Robust")
    else:
        path = Path(source)
    return f"{name}-{float(ratio):g}", float(ratio), path


def summarize(jobs: list[ArmJob], results: list[dict]) -> dict[str, dict]:
    """Per arm: its ratio and module set, and mean, std and per-seed values of every metric, as
    ``mlr run``'s report summarizes its arms."""
    by_arm: dict[str, list[tuple[ArmJob, dict]]] = {}
    for job, metrics in zip(jobs, results):
        by_arm.setdefault(job.arm, []).append((job, metrics))
    return {name: {"ratio": runs[0][0].ratio, "mods_robust": str(runs[0][0].mods_robust),
                   **summarize_arm([job.seed for job, _ in runs], [m for _, m in runs])}
            for name, runs in by_arm.items()}


# Arms of ``mlr run`` reused under their own names (they have no ratio): SWAT and the peers.
RUN_POINTS = ("swat", "sppft", "safeinstr")

# Settings of ``mlr run`` that must match for its arms to stand as frontier points.
SAME_SETTINGS = ("steps", "lr", "batch_size", "max_length", "lora_rank", "max_new_tokens",
                 "eval_limit", "dtype", "harmful", "benign", "ift", "heldout")


def reused_arms(run_dir: Path, config: RunConfig) -> dict[str, list[dict]]:
    """The per-seed metrics (seeds 0..config.seeds-1) of the arms the ``mlr run`` in ``run_dir``
    trained that are frontier points, by frontier name. Exits with a one-line message when the run
    was made with other settings or fewer seeds."""
    setup = json.loads((run_dir / "report.json").read_text())["setup"]
    differ = [name for name in SAME_SETTINGS if setup[name] != getattr(config, name)]
    if setup["model"] != (config.model or EMBEDDED_NAME):
        differ.append("model")
    if differ or setup["seeds"] < config.seeds:
        sys.exit(f"lr_frontier: --reuse-arms: {run_dir} was run with other settings "
                 f"({', '.join(differ) or 'fewer seeds'}); drop --reuse-arms or match them")
    ratio = setup["ratio"]
    names = {"vanilla": "uniform-1", "uniform_lr": f"uniform-{ratio:g}", "ml_lr": f"ml_lr-{ratio:g}",
             **{peer: peer for peer in RUN_POINTS}}
    found = {}
    for arm, frontier_name in names.items():
        evals = [run_dir / "arms" / arm / f"seed-{seed}" / EVAL_FILE for seed in range(config.seeds)]
        if all(path.is_file() for path in evals):
            found[frontier_name] = [{**json.loads(path.read_text())["metrics"],
                                     **read_outcomes(path.parent)} for path in evals]
    return found


def interpolate(xs: list[float], x: float) -> dict[int, float] | None:
    """The weights, by index into ``xs``, of the piecewise-linear curve through the points sorted
    by x, at ``x`` (None outside it)."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    for i, j in zip(order, order[1:]):
        if xs[i] <= x <= xs[j]:
            w = 1.0 if xs[j] == xs[i] else (xs[j] - x) / (xs[j] - xs[i])
            return {i: w, j: 1.0 - w}
    return None


def gap_to_uniform_curve(arms: dict[str, dict], name: str, metric: str = "asr") -> dict | None:
    """How far ``name``'s ``metric`` (ASR, or the refusal score) lies above the uniform-LR curve
    at its own held-out loss, seed by
    seed (each seed's point against the curve of the same seed's uniform arms, which share its
    data order), with a 95 % interval over the seeds and, where the arms carry their per-prompt
    outcomes, the prompts (the curve's outcome on a prompt: the same mix of its two neighbours);
    None where some seed's loss is outside that curve or an arm lacks ``metric``. For ASR, below
    0 (and outside the noise) is safer than a plain LR cut of the same cost; for the refusal
    score, above 0."""
    uniform = [arm for n, arm in arms.items() if family_of(n) == "uniform"]
    point = arms[name]
    if len(uniform) < 2 or any(arm["seeds"] != point["seeds"]
                               or None in (arm.get(f"{metric}_per_seed") or [None])
                               for arm in (*uniform, point)):
        return None
    with_outcomes = all(f"{metric}_outcomes" in arm for arm in (*uniform, point))
    gaps, outcome_gaps = [], []
    for i in range(len(point["seeds"])):
        weights = interpolate([arm["heldout_loss_per_seed"][i] for arm in uniform],
                              point["heldout_loss_per_seed"][i])
        if weights is None:
            return None
        curve = sum(w * uniform[k][f"{metric}_per_seed"][i] for k, w in weights.items())
        gaps.append(point[f"{metric}_per_seed"][i] - curve)
        if with_outcomes:
            columns = zip(*(uniform[k][f"{metric}_outcomes"][i] for k in weights))
            outcome_gaps.append([own - sum(w * c for w, c in zip(weights.values(), column))
                                 for own, column in zip(point[f"{metric}_outcomes"][i], columns)])
    return mean_difference(gaps, outcome_gaps if with_outcomes else None).to_json()


def family_of(arm: str) -> str:
    if arm in RUN_POINTS:
        return "run"
    prefix = arm.split("-", 1)[0]
    return "random" if prefix.startswith("random") else \
        prefix if prefix in ("uniform", "ml_lr") else "extra"


PANELS = (("asr", "attack success rate (lower: safer)"),
          ("refusal_score", "refusal score, teacher-forced (higher: safer)"))
FAMILIES = {"uniform": ("#d62728", "o", "every module at base × M"),
            "ml_lr": ("#2ca02c", "s", "ML-LR: Mods_Robust at base, rest × R"),
            "random": ("#7f7f7f", "^", "random set of Mods_Robust's size, rest × R"),
            "extra": ("#1f77b4", "D", "other sets (--extra), rest × R"),
            "run": ("#8c564b", "P", "SWAT and the peer defenses (the mlr run's arms)")}


def plot(arms: dict[str, dict], path: Path) -> None:
    """Safety against usability, one panel per measure the arms carry (ASR; refusal score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, t) for m, t in PANELS if all(arm.get(m) is not None for arm in arms.values())]
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for axis, (metric, label) in zip(axes[0], panels):
        for family, (color, marker, legend) in FAMILIES.items():
            names = [n for n in arms if family_of(n) == family]
            for i, name in enumerate(names):
                arm = arms[name]
                axis.errorbar(arm["heldout_loss"], arm[metric], xerr=arm["heldout_loss_std"],
                              yerr=arm[f"{metric}_std"], color=color, marker=marker, capsize=3,
                              label=legend if i == 0 else None)
                axis.annotate(name if family in ("extra", "run") else name.split("-", 1)[1],
                              (arm["heldout_loss"], arm[metric]), fontsize=8, xytext=(4, 4),
                              textcoords="offset points")
            if family == "uniform" and names:
                ordered = sorted(names, key=lambda n: arms[n]["heldout_loss"])
                axis.plot([arms[n]["heldout_loss"] for n in ordered],
                          [arms[n][metric] for n in ordered], color=color, linewidth=1)
        axis.set_xlabel("held-out loss (lower: more useful)")
        axis.set_ylabel(label)
        axis.set_title(f"{label.split(' (')[0]} against a plain lower learning rate "
                       "(bars: ± std over seeds)", fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure_atomic(path, figure)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--analysis", type=Path, required=True,
                        help="output directory of mlr run / mlr search on the base model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", help="base model (default: the aligned embedded default)")
    parser.add_argument("--uniform", type=floats, default=[1.0, 0.8, 0.6, 0.4])
    parser.add_argument("--ml-lr", type=floats, default=[0.6, 0.3, 0.1])
    parser.add_argument("--random-sets", type=int, default=2)
    parser.add_argument("--random-ratio", type=float, default=0.3)
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=RATIO:SOURCE")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="default: mlr run's for the model")
    parser.add_argument("--lr", type=float, help="default: mlr run's for the model")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reuse-arms", action="store_true",
                        help="take the points the mlr run in --analysis already trained")
    args = parser.parse_args()

    torch.set_num_threads(1)
    config = resolve_defaults(RunConfig(out=str(args.out), model=args.model, seeds=args.seeds,
                                        steps=args.steps, lr=args.lr, jobs=args.jobs))
    base = str(align_model(config.alignment, args.model)) if config.alignment else args.model
    mods_robust = args.analysis / "mods_robust.json"
    probe = ProbeResult.from_json(json.loads((args.analysis / "probe.json").read_text()))
    data = run_data(config)
    args.out.mkdir(parents=True, exist_ok=True)

    names = sorted(ref.name for ref in decoder_modules(load_model(base)[0]))
    robust = read_mods_robust(mods_robust)
    arms = [(f"uniform-{m:g}", m, None) for m in args.uniform]
    arms += [(f"ml_lr-{r:g}", r, mods_robust) for r in args.ml_lr]
    for k, path in enumerate(random_sets(names, robust, args.random_sets, args.out)):
        arms.append((f"random{k}-{args.random_ratio:g}", args.random_ratio, path))
    rmap = RobustnessMap.from_json(json.loads((args.analysis / "robustness.json").read_text()))
    arms += [extra_arm(spec, names, robust, args.out, rmap) for spec in args.extra]
    reused = reused_arms(args.analysis, config) if args.reuse_arms else {}
    arms += [(name, 1.0, None) for name in RUN_POINTS if name in reused]
    jobs = [ArmJob(name, ratio, robust, seed) for name, ratio, robust in arms
            for seed in range(args.seeds) if name not in reused]
    context = ArmContext(replace(config, out=str(args.out)), base, data.train_examples,
                         data.eval_set, probe)
    results = run_arm_jobs(context, jobs)
    for name, ratio, robust in arms:
        if name in reused:
            print(f"{name}: the mlr run's arm, reused")
            jobs += [ArmJob(name, ratio, robust, seed) for seed in range(args.seeds)]
            results += reused[name]
    summary = summarize(jobs, results)
    summary = {name: summary[name] for name, _, _ in arms}  # the order asked for
    for name, arm in summary.items():
        if family_of(name) != "uniform":
            arm["gap_to_uniform_curve"] = gap_to_uniform_curve(summary, name)
            arm["refusal_gap_to_uniform_curve"] = gap_to_uniform_curve(summary, name,
                                                                       "refusal_score")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json_atomic(args.out / "frontier.json", {"arms": summary, "base": base,
                                                   "settings": settings})
    plot(summary, args.out / "frontier.png")
    print(f"{'arm':14s} {'ASR (± std)':>14s} {'held-out loss':>16s} {'task acc':>8s}  "
          "ASR / refusal score above the uniform curve at the same loss")
    for name, arm in summary.items():
        gaps = [arm.get("gap_to_uniform_curve"), arm.get("refusal_gap_to_uniform_curve")]
        print(f"{name:14s} {arm['asr']:.3f} ± {arm['asr_std']:.3f} "
              f"{arm['heldout_loss']:.4f} ± {arm['heldout_loss_std']:.4f} {arm['task_accuracy']:.3f}  "
              + " / ".join(Difference.from_json(gap).describe() for gap in gaps if gap))


if __name__ == "__main__":
    sys.exit(main())
