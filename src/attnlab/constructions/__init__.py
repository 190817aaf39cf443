"""Explicit attention weights that solve the tasks of Sanford, Hsu and Telgarsky (2023), verified.

- `CertificateQSA`, `smallest_certificate_qsa`, `verified_certificate_qsa`: qSA, Theorem 2 (random
  keys, dual certificates; the width search in qsa_width.py).
- `MomentCurveQSA`, `smallest_moment_curve_precision`: qSA, Theorem 3 (moment curve, high precision).
- `Match2Construction`: Match2 with one standard unit (width 3 and no residual, or width 2 plus a
  residual; see match2.py).
- `ThirdOrderMatch3`: Match3 with one third-order unit of width 4.
- `LocalMatch3`, `smallest_local_match3`: windowed Match3 with one standard head.
- `histogram_layer`, `verify_histogram`: Match3 on every input with one standard head of width M
  (the residue histogram; match3_histogram.py), the construction side of Theorem 7.
- `lower_bound`: the set-disjointness instance of Theorem 4 and where constructions stop working.

Every construction has `verify(task, rng, n)`, which runs it on sampled and adversarial inputs
and scores them with the task's own `score`, and `to_dict()` for JSON.
"""

from attnlab.constructions.match2 import Match2Construction, smallest_match_precision
from attnlab.constructions.match3 import ThirdOrderMatch3
from attnlab.constructions.match3_histogram import histogram_layer, verify_histogram
from attnlab.constructions.match3_local import LocalMatch3, smallest_local_match3
from attnlab.constructions.qsa_certificates import CertificateQSA
from attnlab.constructions.qsa_moment_curve import MomentCurveQSA, smallest_moment_curve_precision
from attnlab.constructions.qsa_width import smallest_certificate_qsa, verified_certificate_qsa
from attnlab.constructions.verification import ConstructionFailed, Verification

__all__ = [
    "CertificateQSA",
    "ConstructionFailed",
    "LocalMatch3",
    "Match2Construction",
    "MomentCurveQSA",
    "ThirdOrderMatch3",
    "Verification",
    "histogram_layer",
    "smallest_certificate_qsa",
    "verified_certificate_qsa",
    "smallest_local_match3",
    "smallest_match_precision",
    "smallest_moment_curve_precision",
    "verify_histogram",
]
