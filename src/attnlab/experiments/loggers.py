"""Optional training-curve loggers for `train(..., logger=...)`: TensorBoard or MLflow, used only
when the package is installed (neither is a dependency of attnlab).

    from attnlab.experiments.loggers import make_logger
    with make_logger("tensorboard:runs/tb") as log:
        train(config, logger=log)

A logger is any callable `(step, {"train_loss", "val_loss", "lr"}) -> None`; these two also
close cleanly as context managers.
"""

from __future__ import annotations

from pathlib import Path

from attnlab.errors import AttnlabError


class LoggerUnavailable(AttnlabError, ValueError):
    """The requested logging backend is not installed, or the spec names none."""


class TensorBoardLogger:
    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise LoggerUnavailable(
                "TensorBoard logging needs the tensorboard package: pip install tensorboard"
            ) from exc
        self._writer = SummaryWriter(str(log_dir))

    def __call__(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MLflowLogger:
    def __init__(self, experiment: str = "attnlab"):
        try:
            import mlflow
        except ImportError as exc:
            raise LoggerUnavailable(
                "MLflow logging needs the mlflow package: pip install mlflow"
            ) from exc
        self._mlflow = mlflow
        mlflow.set_experiment(experiment)
        self._run = mlflow.start_run()

    def __call__(self, step: int, values: dict[str, float]) -> None:
        self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self._mlflow.end_run()

    def __enter__(self) -> MLflowLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_logger(spec: str) -> TensorBoardLogger | MLflowLogger:
    """'tensorboard:DIR' or 'mlflow[:EXPERIMENT]'."""
    kind, _, arg = spec.partition(":")
    if kind == "tensorboard":
        if not arg:
            raise LoggerUnavailable("give the TensorBoard log folder: --log tensorboard:DIR")
        return TensorBoardLogger(arg)
    if kind == "mlflow":
        return MLflowLogger(arg or "attnlab")
    raise LoggerUnavailable(
        f"unknown logger {spec!r}; use 'tensorboard:DIR' or 'mlflow[:EXPERIMENT]'"
    )
