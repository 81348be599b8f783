"""icsscan/config.py: component names (readable and short), score strings."""
from __future__ import annotations

import pytest

from icsscan.config import (GLOBAL_COMPONENTS, LOCAL_COMPONENTS, READABLE_NAMES, ICSConfig, readable_score,
                            score_parts, score_weights)


def test_readable_and_short_names_are_the_same_score():
    readable = ICSConfig(score="patch_knn*2+patch_ics+global_knn")
    short = ICSConfig(score="knn*2+pics+gknn")
    assert readable.score == short.score == "patch_knn*2+patch_ics+global_knn"
    assert score_parts(readable.score) == score_parts(short.score) == ("knn", "pics", "gknn")  # the code's keys
    assert score_weights(readable.score) == {"knn": 0.5, "pics": 0.25, "gknn": 0.25}
    assert ICSConfig(score="ics + rot*0.7 + maha*2").score == "ics+rotation*0.7+mahalanobis*2"
    assert ICSConfig().score == "auto"


def test_every_component_has_one_readable_name():
    assert set(READABLE_NAMES) == set(GLOBAL_COMPONENTS) | set(LOCAL_COMPONENTS)
    assert len(set(READABLE_NAMES.values())) == len(READABLE_NAMES)
    for short, name in READABLE_NAMES.items():
        assert readable_score(short) == name and score_parts(name) == (short,)


def test_an_unknown_name_is_refused_with_the_readable_list():
    cfg = ICSConfig(score="patch_knn+nonsense")
    assert cfg.score == "patch_knn+nonsense"  # left as given for the error to show
    with pytest.raises(ValueError, match="global_knn") as err:
        cfg.with_overrides(backbone="efficientnet-lite0").validate()
    assert "nonsense" in str(err.value)
