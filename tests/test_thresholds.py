"""--false-alarm-rate: the threshold flags at most the asked share of the calibration images, and no fewer than
it must (the lowest such threshold), with ties and small calibration sets."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icsscan.errors import ModelError, UsageError
from icsscan.thresholds import false_alarm_rate, threshold_for_rate


def test_fifty_calibration_images_at_five_percent_flag_two():
    scores = np.linspace(0.1, 0.9, 50)
    threshold = threshold_for_rate(scores, 0.05)
    assert threshold == scores[48] and false_alarm_rate(scores, threshold) == 0.04  # the 0.95 quantile flagged 3


def test_ties_and_too_few_images():
    tied = np.array([0.1, 0.2, 0.7, 0.7, 0.7, 0.9])
    assert threshold_for_rate(tied, 0.4) == 0.9  # 2 may be flagged; 0.7 would flag 4
    assert false_alarm_rate(tied, threshold_for_rate(tied, 0.1)) == 0.0  # 0.6 of an image: none, just above 0.9
    assert threshold_for_rate(tied, 0.1) > 0.9
    assert threshold_for_rate(np.array([0.5] * 10), 0.5) > 0.5
    with pytest.raises(UsageError):
        threshold_for_rate(tied, 1.0)
    with pytest.raises(ModelError, match="no calibration scores"):
        threshold_for_rate(np.array([]), 0.05)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]) | st.floats(0, 1), min_size=1,
                max_size=200),
       st.floats(0.001, 0.999))
def test_at_most_the_rate_and_the_lowest_such_threshold(values, rate):
    scores = np.sort(np.array(values))
    threshold = threshold_for_rate(scores, rate)
    assert false_alarm_rate(scores, threshold) <= rate + 1e-9
    lower = scores[scores < threshold]
    if len(lower):  # the next lower score would flag more than allowed
        assert false_alarm_rate(scores, lower[-1]) > rate - 1e-9
