"""Training: one loop, and one small module for each thing it needs.

* :mod:`~quillgpt.training.loop` -- :func:`train`: the loop, the step, the resume state.
* :mod:`~quillgpt.training.config` -- :class:`TrainConfig` and TOML/YAML/JSON config files.
* :mod:`~quillgpt.training.schedule` -- the learning rate as a function of step and budget.
* :mod:`~quillgpt.training.optim` -- AdamW with weight decay on matrices only.
* :mod:`~quillgpt.training.precision` -- autocast and the gradient scaler.
* :mod:`~quillgpt.training.parallel` -- one process, DDP or FSDP2 (torchrun).
* :mod:`~quillgpt.training.run_dir` -- the run directory and ``train_state.pt``.
* :mod:`~quillgpt.training.validation` -- evaluation during training, ``best/``, samples.
* :mod:`~quillgpt.training.report` -- log lines, the progress bar, metrics, plots.
* :mod:`~quillgpt.training.metrics` -- the ``metrics.jsonl`` format, ``loss.png``, TensorBoard.
* :mod:`~quillgpt.training.given_model` -- what a model passed to :func:`train` must be.
* :mod:`~quillgpt.training.signals` -- SIGINT/SIGTERM to a clean, resumable stop.
"""

from quillgpt.training.config import TrainConfig, load_config_file, parse_duration
from quillgpt.training.loop import LoopState, NonFiniteError, TrainResult, train

__all__ = [
    "LoopState",
    "NonFiniteError",
    "TrainConfig",
    "TrainResult",
    "load_config_file",
    "parse_duration",
    "train",
]
