import numpy as np
import pytest

from tests.tamper.regions import REGIONS, add_delta, overwrite, region_mask


@pytest.mark.parametrize("kind", REGIONS)
def test_every_region_selects_what_it_names(kind):
    rng = np.random.default_rng(3)
    shape = (64, 48) if kind != "channel" else (8, 4, 3, 3)
    mask = region_mask(kind, shape, rng)
    expected = {
        "element": 1,
        "elements3": 3,
        "row": 48,
        "column": 64,
        "block16": 256,
        "channel": 36,
        "scattered": 64 * 48 // 1000,
    }[kind]
    assert int(mask.sum()) == expected


def test_changes_touch_only_the_region():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(32, 32)).astype(np.float32)
    mask = region_mask("row", w.shape, rng)
    for out in (add_delta(w, mask, 0.5, rng), overwrite(w, mask, 3.0, rng)):
        assert np.array_equal(out[~mask], w[~mask].astype(np.float64))
        assert np.all(out[mask] != w[mask])
