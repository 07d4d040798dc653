"""tests/cuda: the kernel table's ``cuda`` column, run for real on a GPU or, without one, under
Numba's CUDA simulator. The simulator must be chosen before numba is first imported, so the
main suite runs this folder in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``
(``tests/test_cuda_simulator.py``); collected by the main process without a GPU, its tests skip.

The simulator runs every GPU thread as a Python thread (~0.1–0.5 ms each), so these tests draw
few examples (``NPDIFF_CUDA_EXAMPLES``, default 2 per row) of the harness's small shapes.
"""

import pytest

from npdiff.kernels import cuda


@pytest.fixture(autouse=True)
def _needs_the_cuda_column():
    if not cuda.usable():
        pytest.skip("the cuda column needs numba-cuda and a GPU or NUMBA_ENABLE_CUDASIM=1 "
                    "(tests/test_cuda_simulator.py runs this folder under the simulator)")
