"""Training: configuration, the loop, schedules, mixed precision, checkpoints, many processes.

One module per job:

* :mod:`~quillgpt.training.config` -- :class:`TrainConfig` and TOML/YAML/JSON config files.
* :mod:`~quillgpt.training.trainer` -- :class:`Trainer`, the loop and the run directory.
* :mod:`~quillgpt.training.schedule` -- warm-up + cosine/linear decay, fitted to a time budget.
* :mod:`~quillgpt.training.optim` -- AdamW with weight decay on matrices only.
* :mod:`~quillgpt.training.precision` -- autocast and the gradient scaler.
* :mod:`~quillgpt.training.evaluate` -- validation loss, perplexity, bits per byte
  (:func:`evaluate_model`: any model on any prepared split).
* :mod:`~quillgpt.training.state` -- ``train_state.pt`` and random-number-generator states.
* :mod:`~quillgpt.training.distributed` -- torchrun, DDP, FSDP2.
* :mod:`~quillgpt.training.metrics` -- ``metrics.jsonl``, ``loss.png``, TensorBoard.
* :mod:`~quillgpt.training.signals` -- SIGINT/SIGTERM to a clean, resumable stop.
"""

from quillgpt.training.config import TrainConfig, load_config_file, parse_duration
from quillgpt.training.evaluate import EvalResult, evaluate_model
from quillgpt.training.trainer import NonFiniteError, Trainer, TrainResult, train

__all__ = [
    "EvalResult",
    "NonFiniteError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate_model",
    "load_config_file",
    "parse_duration",
    "train",
]
