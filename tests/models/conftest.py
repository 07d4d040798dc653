import os

# Numba's "omp" threading layer (libgomp) spin-waits after every parallel kernel by
# default, starving the OpenBLAS threads of the GEMMs that follow on a 2-core machine:
# the segmentation learning test ran 2.5 s with passive waits and 278 s without.
# libgomp reads this once, when numba first launches a parallel kernel, which happens
# after collection; the project-wide place for it is npdiff/kernels/config.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
