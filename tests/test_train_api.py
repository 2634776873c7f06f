"""The trainer's Python API: training a given model, evaluate_model, stop reasons, plotting."""

from __future__ import annotations

import copy
import itertools
import math
import types

import pytest
import torch

from quillgpt import DecoderLM
from quillgpt.errors import CheckpointError
from quillgpt.training import Trainer, evaluate_model, train
from quillgpt.training import schedule as schedule_module
from quillgpt.training.metrics import plot_losses, read_metrics
from train_utils import (
    assert_same,
    model_config,
    sigterm_during_step,
    train_config,
    weights,
)


def fresh_model(data, seed: int = 1337, **overrides) -> DecoderLM:
    """A model for ``data``'s tokenizer, initialised as the trainer would with ``seed``."""
    torch.manual_seed(seed)
    return DecoderLM(model_config(vocab_size=data.vocab_size, **overrides))


# ---------------------------------------------------------------- plotting


def test_loss_plot_leaves_the_matplotlib_backend_and_pyplot_alone(tmp_path, svg_backend):
    import matplotlib
    import matplotlib.pyplot as plt

    records = [
        {"kind": "train", "step": 2, "tokens": 128, "loss": 3.5},
        {"kind": "train", "step": 4, "tokens": 256, "loss": 3.0},
        {"kind": "eval", "step": 4, "tokens": 256, "val_loss": 3.1, "val_bpb": 4.4},
        {"kind": "final_eval", "step": 4, "tokens": 256, "val_loss": 3.05, "val_bpb": 4.3},
    ]
    figures = plt.get_fignums()
    plot_losses(records, tmp_path / "loss.png", title="run")
    assert matplotlib.get_backend() == "svg"
    assert plt.get_fignums() == figures  # nothing left for pyplot to show
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------- training a given model


def test_a_given_model_is_trained_in_place_like_a_fresh_one(data, tmp_path):
    reference = Trainer(model_config(), train_config(tmp_path / "ref", max_steps=6), data)
    reference.fit()

    model = fresh_model(data)  # the same initialisation as the trainer's fresh model
    result = train(None, train_config(tmp_path / "given", max_steps=6), data, model=model)
    assert result.stopped == "max_steps" and result.step == 6
    assert_same(weights(reference.model), weights(model))  # trained in place, same training
    losses = [
        [r.get("loss", r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")]
        for run in (tmp_path / "ref", tmp_path / "given")
    ]
    assert losses[0] == losses[1]


def test_a_given_model_trains_in_training_mode(data, tmp_path):
    """A model handed over in eval mode (as loaded for generation) still trains with dropout."""
    model = fresh_model(data, dropout=0.2)
    in_eval = copy.deepcopy(model).eval()
    Trainer(model.config, train_config(tmp_path / "a", max_steps=3), data, model=model).fit()
    Trainer(None, train_config(tmp_path / "b", max_steps=3), data, model=in_eval).fit()
    assert_same(weights(model), weights(in_eval))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda data: DecoderLM(model_config(vocab_size=data.vocab_size + 1)), "vocab_size="),
        (lambda data: fresh_model(data).to(torch.bfloat16), "bfloat16 parameters"),
        (lambda data: torch.nn.Linear(4, 4), "must be a quillgpt DecoderLM"),
    ],
)
def test_an_unsuitable_model_is_refused_before_anything_is_written(data, tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        train(None, train_config(tmp_path / "run"), data, model=make(data))
    assert not (tmp_path / "run").exists()


def test_a_given_model_must_match_the_given_config(data, tmp_path):
    model = fresh_model(data)
    with pytest.raises(ValueError, match=r"n_layer=2 \(config: 3\)"):
        Trainer(model_config(n_layer=3), train_config(tmp_path), data, model=model)
    # vocab_size is not compared: the trainer always takes it from the tokenizer
    Trainer(model_config(vocab_size=10_000), train_config(tmp_path), data, model=model)
    with pytest.raises(ValueError, match="model_config, or a model"):
        Trainer(None, train_config(tmp_path / "none"), data)


def test_resume_loads_the_checkpoint_into_a_given_model(data, tmp_path):
    reference = fresh_model(data)
    train(None, train_config(tmp_path / "ref", max_steps=10), data, model=reference)

    cfg = train_config(tmp_path / "run", max_steps=10)
    first = Trainer(None, cfg, data, model=fresh_model(data))
    sigterm_during_step(first, 6)
    assert first.fit().stopped == "SIGTERM"

    other = fresh_model(data, seed=7)  # other initial weights: the checkpoint's replace them
    result = train(None, cfg, data, model=other, resume=True)
    assert result.step == 10
    assert_same(weights(reference), weights(other))
    with pytest.raises(CheckpointError, match="model config differs.*n_layer"):
        train(None, cfg, data, model=fresh_model(data, n_layer=3), resume=True)


# ---------------------------------------------------------------- evaluate_model


def test_evaluate_model_is_the_trainers_whole_split_evaluation(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=4, final_eval=True)
    trainer = Trainer(model_config(), cfg, data)
    final = trainer.fit().final_eval
    result = evaluate_model(trainer.model, data, batch_size=cfg.batch_size)
    assert result.targets == final.targets == data.val_tokens - 1
    assert result.loss == pytest.approx(final.loss, rel=1e-9)
    assert result.bpb == pytest.approx(final.bpb, rel=1e-9)
    assert result.perplexity == pytest.approx(math.exp(result.loss))


def test_evaluate_model_on_the_first_batches(data):
    model = fresh_model(data, dropout=0.5)  # in training mode: evaluation must switch it off
    batches = 3
    result = evaluate_model(model, data, split="train", batch_size=4, max_batches=batches)
    assert model.training  # the mode is restored

    from quillgpt.data import make_eval_loader

    model.eval()
    losses = []
    with torch.no_grad():
        for x, y in itertools.islice(make_eval_loader(data, 16, 4, split="train"), batches):
            losses.append(model(x, targets=y)[1].item())
    assert result.targets == batches * 4 * 16
    assert result.loss == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    tokens_per_byte = (data.num_tokens("train") - 1) / data.num_bytes("train")
    assert result.bpb == pytest.approx(result.loss / math.log(2) * tokens_per_byte)


def test_evaluate_model_refuses_a_smaller_vocabulary(data):
    model = DecoderLM(model_config(vocab_size=data.vocab_size - 1))
    with pytest.raises(ValueError, match="prepared with the model's own tokenizer"):
        evaluate_model(model, data)


# ---------------------------------------------------------------- why a run stopped


class SpeedingClock:
    """A ``perf_counter`` that advances a fixed amount per call, half as much after 1 s.

    Gives the time budget a deterministic pace, and one that speeds up (as when another job on
    a shared machine ends): the schedule fitted to the average pace then ends a little before
    the budget runs out.
    """

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick if self.now < 1.0 else self.tick / 2
        return self.now


@pytest.mark.parametrize(
    ("max_steps", "stopped"),
    [(None, "max_time"), (1000, "max_time"), (30, "max_steps")],
)
def test_stop_reason_names_the_limit_that_ended_the_run(
    data, tmp_path, monkeypatch, max_steps, stopped
):
    # Only the budget's clock is replaced (the trainer keeps the real one): a 2 s budget at
    # 4 ms, then 2 ms, a call is some 100 steps, whatever the speed of the machine.
    clock = SpeedingClock(4e-3)
    monkeypatch.setattr(schedule_module, "time", types.SimpleNamespace(perf_counter=clock))
    cfg = train_config(
        tmp_path, max_steps=max_steps, max_time=2.0, eval_interval=1000, ckpt_interval=0
    )
    trainer = Trainer(model_config(), cfg, data)
    result = trainer.fit()
    assert result.stopped == stopped
    fitted = trainer.scheduler.lr_lambdas[0].max_steps
    assert result.step == fitted and 20 < fitted < 1000
    if max_steps == 30:
        assert result.step == 30
    else:
        assert clock.now < 2.0  # the schedule's last step came before the clock ran out
