import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Two cores shared by tests and their subprocesses: threaded BLAS on small matrices only thrashes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests are derandomized by default, so neither CI nor a developer's fast loop can fail
# by the luck of a draw. Random exploration is opt-in: HYPOTHESIS_PROFILE=explore pytest ...
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Targets answer thousands of small batches; extra intra-op threads only contend on CI.
    Modules that extract use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
