"""Confidence intervals over seeds and the seed-paired differences of the report."""

import math
import statistics

import pytest
from mlr.environment import environment
from mlr.evaluation.intervals import (
    Difference,
    ci95_half_width,
    paired_difference,
    prompt_half_width,
    t975,
)
from mlr.evaluation.report import differences, render_markdown, summarize_arm, target_check


def test_t975_follows_the_table_and_joins_the_normal_quantile():
    assert t975(1) == pytest.approx(12.706)
    assert t975(2) == pytest.approx(4.303)
    assert t975(30) == pytest.approx(2.042)
    assert abs(t975(31) - 2.0395) < 0.0005  # exact values, from a table
    assert abs(t975(120) - 1.9799) < 0.0005
    values = [t975(df) for df in range(1, 200)]
    assert values == sorted(values, reverse=True)
    with pytest.raises(ValueError, match="degree of freedom"):
        t975(0)


def test_ci95_half_width_is_the_t_interval():
    values = [0.31, 0.24, 0.27, 0.35]
    expected = 3.182 * statistics.stdev(values) / math.sqrt(4)
    assert ci95_half_width(values) == pytest.approx(expected)
    assert ci95_half_width([0.5]) is None


def test_paired_difference_removes_the_shared_seed_effect():
    # Each seed moves both arms together; the arms differ by a steady 0.05.
    base = [0.20, 0.45, 0.30]
    a = [x + 0.05 for x in base]
    paired = paired_difference(a, base)
    assert paired.mean == pytest.approx(0.05)
    assert not paired.inside_noise  # the spread of base cancels
    assert paired.low == pytest.approx(0.05) and paired.high == pytest.approx(0.05)
    noisy = paired_difference([0.30, 0.10, 0.25], [0.20, 0.30, 0.20])
    assert noisy.inside_noise
    assert "inside the noise" in noisy.describe()
    assert "outside the noise" in paired.describe()


def test_one_seed_tells_nothing_apart_and_mismatched_seeds_are_refused():
    one = paired_difference([0.4], [0.1])
    assert one.low is None and one.inside_noise
    assert "one seed" in one.describe()
    assert Difference.from_json(one.to_json()) == one
    with pytest.raises(ValueError, match="paired seeds"):
        paired_difference([0.1, 0.2], [0.1])


def _metrics(asr, loss):
    return {"asr": asr, "over_refusal": 0.1, "heldout_loss": loss, "task_accuracy": 0.5,
            "probe": None}


def test_report_gives_intervals_and_says_when_a_difference_is_inside_the_noise():
    seeds = [0, 1, 2]
    arms = {"aligned": summarize_arm([0], [_metrics(0.05, 2.0)]),
            "vanilla": summarize_arm(seeds, [_metrics(a, 1.30) for a in (0.70, 0.62, 0.66)]),
            "ml_lr": summarize_arm(seeds, [_metrics(a, 1.40) for a in (0.30, 0.22, 0.21)]),
            "uniform_lr": summarize_arm(seeds, [_metrics(a, 1.41) for a in (0.25, 0.27, 0.20)])}
    assert arms["aligned"]["asr_ci95"] is None
    assert arms["vanilla"]["asr_ci95"] == pytest.approx(ci95_half_width([0.70, 0.62, 0.66]))
    check = target_check(arms)
    found = check["differences"]
    assert set(found) == {"ml_lr-uniform_lr", "ml_lr-vanilla"}  # no swat arm here
    assert found["ml_lr-uniform_lr"]["asr"]["inside_noise"]
    assert not found["ml_lr-vanilla"]["asr"]["inside_noise"]
    assert found["ml_lr-vanilla"]["asr"]["mean"] == pytest.approx(
        arms["ml_lr"]["asr"] - arms["vanilla"]["asr"])
    report = {"smoke_test": False, "arms": arms, "target": check, "wall_seconds": 60.0,
              "environment": environment("cpu"),
              "mods_robust": {"modules": ["model.layers.0.self_attn.q_proj"],
                              "param_fraction": 0.02},
              "setup": {"model": "m", "steps": 4, "lr": 1e-3, "batch_size": 2, "ratio": 0.6,
                        "perturb": "noise", "alpha": 2.0, "tau": 0.9, "jobs": 1, "threads": 1,
                        "stage_seconds": {"align": 1.0},
                        "counts": {"harmful": 48, "benign": 48, "instructions": 96}}}
    markdown = render_markdown(report)
    assert "`ml_lr` − `uniform_lr`: ASR" in markdown
    assert "inside the noise" in markdown and "outside the noise" in markdown
    assert f"{arms['ml_lr']['asr']:.3f} ± {arms['ml_lr']['asr_ci95']:.3f}" in markdown


def test_arms_with_different_seeds_are_not_paired():
    arms = {"ml_lr": summarize_arm([0, 1], [_metrics(0.2, 1.0), _metrics(0.3, 1.0)]),
            "uniform_lr": summarize_arm([0, 2], [_metrics(0.2, 1.0), _metrics(0.3, 1.0)])}
    assert differences(arms) == {}


def test_identical_seeds_still_carry_the_noise_of_the_prompts():
    # Two seeds that judge 48 prompts exactly alike: a std of 0 over seeds, but 2 of 48 prompts
    # flipped between the arms is no certain difference (SmolLM2's run, 2026-12-01, had this).
    a = [[1] * 38 + [0] * 10] * 2
    b = [[1] * 36 + [0] * 12] * 2
    seeds_only = paired_difference([38 / 48] * 2, [36 / 48] * 2)
    assert seeds_only.low == seeds_only.high  # zero width: what the seeds alone would claim
    both = paired_difference([38 / 48] * 2, [36 / 48] * 2, a, b)
    assert both.mean == pytest.approx(2 / 48)
    assert both.inside_noise
    per_prompt = [1.0, 1.0] + [0.0] * 46
    assert both.high - both.mean == pytest.approx(1.959964 * statistics.stdev(per_prompt) / math.sqrt(48))


def test_prompt_half_width_is_the_normal_interval_of_the_prompt_means():
    outcomes = [[1, 0, 1, 1], [1, 0, 0, 1]]
    means = [1.0, 0.0, 0.5, 1.0]
    assert prompt_half_width(outcomes) == pytest.approx(1.959964 * statistics.stdev(means) / 2)
    seeds = [0.75, 0.5]
    combined = ci95_half_width(seeds, outcomes)
    assert combined == pytest.approx(math.hypot(ci95_half_width(seeds), prompt_half_width(outcomes)))
    with pytest.raises(ValueError, match="same prompts"):
        prompt_half_width([[1, 0], [1]])
