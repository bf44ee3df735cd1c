"""lisa_model.mask_regions: a mask's detached regions that the decoder is unsure of are dropped, nothing else."""
import dataclasses

import numpy as np
import pytest

from lisa_model.mask_regions import keep_confident_regions
from lisa_ros.parameters import default_settings


def _blob(shape, center, radius, peak) -> np.ndarray:
    """Logits of a round region: `peak` at the centre, 0 on the rim, negative outside."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return peak * (1.0 - np.hypot(yy - center[0], xx - center[1]) / radius)


def _logits(*blobs) -> np.ndarray:
    return np.max([_blob((120, 160), *b) for b in blobs], axis=0).astype(np.float32)


def test_a_weak_detached_patch_is_dropped_and_the_target_kept_whole():
    logits = _logits(((60, 50), 30, 12.0), ((30, 130), 10, 4.0))  # target; patch peaking at a third of it
    kept = keep_confident_regions(logits, 0.5)
    target = _blob(logits.shape, (60, 50), 30, 12.0) > 0
    np.testing.assert_array_equal(kept, target)
    assert (logits > 0).sum() > target.sum()  # there was a patch to drop


def test_regions_the_decoder_is_about_as_sure_of_all_stay():
    # "the chairs": two instances; the smaller one peaks a little lower
    logits = _logits(((60, 40), 25, 12.0), ((60, 125), 15, 9.0))
    np.testing.assert_array_equal(keep_confident_regions(logits, 0.5), logits > 0)


def test_the_largest_region_is_kept_even_when_a_smaller_one_peaks_higher():
    logits = _logits(((60, 50), 30, 5.0), ((30, 135), 8, 20.0))
    np.testing.assert_array_equal(keep_confident_regions(logits, 0.5), logits > 0)


def test_off_gives_the_models_mask_exactly():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(48, 64)).astype(np.float32)  # hundreds of speckle regions
    np.testing.assert_array_equal(keep_confident_regions(logits, 0.0), logits > 0)
    assert keep_confident_regions(logits, 0.5).sum() < (logits > 0).sum()


def test_an_empty_mask_stays_empty_and_the_ratio_is_checked():
    assert not keep_confident_regions(np.full((8, 8), -3.0, np.float32), 0.5).any()
    with pytest.raises(ValueError, match=r"min_peak_ratio must be in \[0, 1\]"):
        keep_confident_regions(np.zeros((8, 8), np.float32), 1.5)


def test_the_node_refuses_a_ratio_outside_0_1():
    with pytest.raises(ValueError, match="mask_min_peak_ratio must be in"):
        dataclasses.replace(default_settings(), mask_min_peak_ratio=-0.1)
