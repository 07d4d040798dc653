"""npdiff's kernels: pure array functions, forward and backward, one family per file.

Call them through the table (``npdiff.kernels.conv2d_forward(...)`` ...): one dispatch
validates the arguments once and picks the implementation — see ``dispatch.py`` for the
switch (``NPDIFF_KERNELS=reference|fast``, ``with npdiff.kernels.use("reference"): ...``)
and ``table.py`` for the rows.
"""

from .dispatch import OPS, current, use  # noqa: F401
from .table import *  # noqa: F401,F403
