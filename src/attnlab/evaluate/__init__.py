"""Comparison with ground truth, and the target -> oracle -> extractor -> row recipes.

The only layer allowed to hold both a target's true parameters and an extraction: extractors
never see the truth, and the CLI, the report, the benchmarks and the tests all compare through
the functions here.
"""

from attnlab.evaluate.truth import (
    frobenius_error,
    functional_error,
    gaussian_batches,
    model_outputs,
    parameter_errors,
    relative_error,
    true_parameters,
)

__all__ = [
    "frobenius_error",
    "functional_error",
    "gaussian_batches",
    "model_outputs",
    "parameter_errors",
    "relative_error",
    "true_parameters",
]
