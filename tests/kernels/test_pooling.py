"""Pooling family, what the table harness (test_table.py) does not cover: the nearest index rule
(torch's, exactly: see tests/nn/test_pooling.py for the oracle over many sizes)."""

import numpy as np

from npdiff.kernels import pooling as K


def test_nearest_index_rule_is_floor_of_dst_times_in_over_out():
    # 3 → 7 by size: src = ⌊d·3/7⌋;  2 → 4 by scale 2: src = d // 2
    np.testing.assert_array_equal(K.nearest_source_index(3, 7), [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(K.nearest_source_index(2, 4, 2.0), [0, 0, 1, 1])
