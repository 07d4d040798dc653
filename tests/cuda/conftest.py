"""tests/cuda: the kernel table's ``cuda`` column, run for real on a GPU or, without one, under
Numba's CUDA simulator. The simulator must be chosen before numba is first imported, so the
main suite runs this folder in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``
(``tests/test_cuda_simulator.py``); collected by the main process without a GPU, its tests skip.

The simulator runs every GPU thread as a Python thread (~0.1–0.5 ms each), so these tests draw
few examples (``NPDIFF_CUDA_EXAMPLES``, default 2 per row) of the harness's small shapes.
"""

import pytest

from npdiff.kernels import cuda


def pytest_collection_modifyitems(config, items):
    """Skip this folder's tests when the column cannot run, as a mark, so that not even their
    module-scoped fixtures (which train on the device) are set up."""
    if cuda.usable():
        return
    skip = pytest.mark.skip(reason="the cuda column needs numba-cuda and a GPU or NUMBA_ENABLE_CUDASIM=1 "
                                   "(tests/test_cuda_simulator.py runs this folder under the simulator)")
    here = str(config.rootpath / "tests" / "cuda")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)
