"""runtime/comparator.py: the one measure of how far a model's logits are from a reference's."""

from __future__ import annotations

import numpy as np
import pytest

from fgcli.errors import FgcliError
from fgcli.runtime.comparator import compare_logits, logit_tolerance, top1_agreement, within_tolerance


def test_identical_logits_agree_fully_with_no_difference():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]], np.float32)
    comparison = compare_logits(logits, logits.copy(), labels=np.array([0, 2]))
    assert (comparison.agreement, comparison.kl, comparison.logit_rmse, comparison.max_abs_diff) == (1.0, 0.0, 0.0, 0.0)
    assert comparison.top1 == 0.5 and comparison.n_images == 2


def test_differences_kl_and_a_top1_flip_are_measured():
    reference = np.array([[1.0, 0.0], [0.0, 1.0]])
    candidate = np.array([[0.0, 1.0], [0.0, 1.0]])  # first image flips, by 1 on each logit
    comparison = compare_logits(reference, candidate)
    p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    assert comparison.agreement == 0.5 and comparison.max_abs_diff == 1.0
    assert comparison.logit_rmse == pytest.approx(np.sqrt(0.5))
    assert comparison.kl == pytest.approx(np.sum(p * (np.log(p) - np.log(p[::-1]))) / 2)


def test_the_tolerance_rule_bounds_max_or_rms_and_top1_and_fails_on_nan():
    reference = np.array([[1.0, 0.9996]])
    flipped = compare_logits(reference, np.array([[0.9996, 1.0]]))
    assert within_tolerance(flipped, 1e-3, strict_top1=False) and not within_tolerance(flipped, 1e-3)
    assert not within_tolerance(flipped, 1e-5, strict_top1=False)
    assert within_tolerance(flipped, 5e-4, metric="rms", strict_top1=False)
    assert not within_tolerance(compare_logits(reference, np.array([[np.nan, 1.0]])), 1.0, strict_top1=False)
    with pytest.raises(FgcliError, match="unknown tolerance metric"):
        within_tolerance(flipped, 1.0, metric="mean")
    assert logit_tolerance(np.array([[20.0, -5.0]]), 1e-3, 1e-4) == pytest.approx(2e-3)


def test_shapes_or_counts_that_differ_are_refused():
    with pytest.raises(FgcliError, match="cannot be compared"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(FgcliError, match="cannot be compared"):
        top1_agreement(["a", "b"], ["a"])
    assert top1_agreement(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
