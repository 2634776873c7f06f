"""The training API: training a given model, evaluate_model, the schedule, stop reasons, plots."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from quillgpt import DecoderLM
from quillgpt.errors import CheckpointError, ConfigError
from quillgpt.evaluation import evaluate_model
from quillgpt.training import TrainConfig, train
from quillgpt.training.metrics import plot_losses, read_metrics
from quillgpt.training.schedule import budget_progress, budget_spent, lr_at
from train_utils import (
    assert_same,
    fresh_model,
    model_config,
    sigterm_during_step,
    train_config,
    weights,
)

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
    train(model_config(), train_config(tmp_path / "ref", max_steps=6), data)

    model = fresh_model(data)  # the same initialisation as train's fresh model
    result = train(None, train_config(tmp_path / "given", max_steps=6), data, model=model)
    assert result.stopped == "max_steps" and result.state.step == 6
    from quillgpt import load_checkpoint

    reference = load_checkpoint(tmp_path / "ref")
    assert_same(weights(reference), weights(model))  # trained in place, same training
    losses = [
        [r.get("loss", r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")]
        for run in (tmp_path / "ref", tmp_path / "given")
    ]
    assert losses[0] == losses[1]


def test_a_given_model_trains_in_training_mode(data, tmp_path):
    """A model handed over in eval mode (as loaded for generation) still trains with dropout."""
    model = fresh_model(data, dropout=0.2)
    in_eval = copy.deepcopy(model).eval()
    train(model.config, train_config(tmp_path / "a", max_steps=3), data, model=model)
    train(None, train_config(tmp_path / "b", max_steps=3), data, model=in_eval)
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
    with pytest.raises(ConfigError, match=r"n_layer=2 \(config: 3\)"):
        train(model_config(n_layer=3), train_config(tmp_path / "a"), data, model=model)
    # vocab_size is not compared: training always takes it from the tokenizer
    cfg = train_config(tmp_path / "b", max_steps=1)
    train(model_config(vocab_size=10_000), cfg, data, model=model)
    with pytest.raises(ConfigError, match="model_config, or a model"):
        train(None, train_config(tmp_path / "none"), data)


def test_resume_loads_the_checkpoint_into_a_given_model(data, tmp_path):
    reference = fresh_model(data)
    train(None, train_config(tmp_path / "ref", max_steps=10), data, model=reference)

    cfg = train_config(tmp_path / "run", max_steps=10)
    first = fresh_model(data)
    sigterm_during_step(first, 6)
    assert train(None, cfg, data, model=first).stopped == "SIGTERM"

    other = fresh_model(data, seed=7)  # other initial weights: the checkpoint's replace them
    result = train(None, cfg, data, model=other, resume=True)
    assert result.state.step == 10
    assert_same(weights(reference), weights(other))
    with pytest.raises(CheckpointError, match="model config differs.*n_layer"):
        train(None, cfg, data, model=fresh_model(data, n_layer=3), resume=True)


# ---------------------------------------------------------------- evaluate_model


def test_evaluate_model_is_the_trainers_whole_split_evaluation(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=4, final_eval=True)
    model = fresh_model(data)
    final = train(None, cfg, data, model=model).final_eval
    result = evaluate_model(model, data, batch_size=cfg.batch_size)
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


# ---------------------------------------------------------------- the schedule and the budget


def schedule(**fields) -> TrainConfig:
    return TrainConfig(**{"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1, **fields})


def test_warm_up_then_cosine_to_the_floor_at_the_last_step():
    cfg = schedule(max_steps=111)
    rates = [lr_at(cfg, step, budget_progress(step, 0.0, cfg)) for step in range(111)]
    assert rates[0] == pytest.approx(0.1) and rates[4] == pytest.approx(0.5)
    assert rates[9] == pytest.approx(0.5 * (1.1 + 0.9 * math.cos(math.pi * 9 / 110)), rel=1e-9)
    assert rates[55] == pytest.approx(0.55)  # halfway through the budget: (1 + 0.1) / 2
    assert rates[110] == pytest.approx(0.1)  # the last step runs at the floor
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))


def test_linear_and_constant_shapes():
    linear = schedule(schedule="linear", warmup_steps=0, min_lr_ratio=0.0, max_steps=101)
    rates = [lr_at(linear, s, budget_progress(s, 0.0, linear)) for s in (0, 25, 50, 100)]
    assert rates == pytest.approx([1.0, 0.75, 0.5, 0.0])
    const = schedule(schedule="constant", warmup_steps=5, max_steps=100)
    assert [lr_at(const, s, budget_progress(s, 0.0, const)) for s in (0, 4, 50, 99)] == (
        pytest.approx([0.2, 1.0, 1.0, 1.0])
    )


def test_a_time_budget_decays_with_the_clock_and_both_budgets_end_at_the_first():
    cfg = schedule(max_time=100.0, warmup_steps=0)
    assert budget_progress(5, 50.0, cfg) == 0.5
    assert lr_at(cfg, 5, budget_progress(5, 50.0, cfg)) == pytest.approx(0.55)
    assert budget_spent(10**6, 99.9, cfg) == "" and budget_spent(7, 100.0, cfg) == "max_time"
    both = schedule(max_time=100.0, max_steps=11)
    assert budget_progress(5, 10.0, both) == 0.5  # the steps are further along
    assert budget_progress(5, 80.0, both) == 0.8  # the clock is
    assert budget_spent(11, 10.0, both) == "max_steps"


def test_the_learning_rate_of_each_step_is_what_lr_at_says(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=12, log_interval=1, warmup_steps=3)
    train(model_config(), cfg, data)
    logged = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    expected = [lr_at(cfg, s, budget_progress(s, 0.0, cfg)) for s in range(12)]
    assert logged == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- why a run stopped


@pytest.mark.parametrize(
    ("max_steps", "max_time", "stopped"), [(None, 1.5, "max_time"), (10, 600.0, "max_steps")]
)
def test_stop_reason_names_the_limit_that_ended_the_run(
    data, tmp_path, max_steps, max_time, stopped
):
    cfg = train_config(tmp_path, max_steps=max_steps, max_time=max_time, eval_interval=1000)
    result = train(model_config(), cfg, data)
    assert result.stopped == stopped
    if max_steps is None:
        assert result.state.elapsed >= max_time
    else:
        assert result.state.step == 10 and result.state.elapsed < max_time
