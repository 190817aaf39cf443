import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Two cores shared by tests and their subprocesses: threaded BLAS on small matrices only thrashes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
