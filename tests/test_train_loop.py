"""The training loop on a tiny corpus: learning, accumulation, clipping, AMP, resume, failures."""

from __future__ import annotations

import copy
import errno
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from quillgpt import load_checkpoint
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.optimize.devices import cpu_supports_bf16
from quillgpt.training import NonFiniteError, Trainer
from quillgpt.training.metrics import read_metrics
from quillgpt.training.optim import build_optimizer, param_groups
from quillgpt.training.precision import Precision
from quillgpt.training.state import TRAIN_STATE_FILE, load_train_state
from train_utils import (
    assert_same,
    model_config,
    prepare,
    sigterm_during_step,
    train_config,
    weights,
)


def test_loss_goes_down_and_run_directory_is_complete(data, tmp_path):
    cfg = train_config(tmp_path / "run", max_steps=40, eval_interval=20, num_samples=1,
                       sample_tokens=20, final_eval=True, lr=1e-2)  # fmt: skip
    result = Trainer(model_config(), cfg, data).fit()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.8
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert result.stopped == "max_steps" and result.step == 40
    assert result.final_eval is not None and result.final_eval.bpb > 0
    # bits per byte = nats per token / ln 2 * tokens per byte (char level: ~1 token per byte)
    tokens_per_byte = (data.val_tokens - 1) / data.val_bytes
    assert result.final_eval.bpb == pytest.approx(
        result.final_eval.loss / math.log(2) * tokens_per_byte
    )
    for key in ("step", "tokens", "elapsed", "loss", "lr", "grad_norm", "tokens_per_s",
                "peak_memory_mb"):  # fmt: skip
        assert key in train[-1]
    for key in ("val_loss", "val_ppl", "val_bpb"):
        assert key in evals[-1]
    assert records[-1]["kind"] == "final_eval"
    run = tmp_path / "run"
    for name in ("config.json", "tokenizer.json", "model.safetensors", TRAIN_STATE_FILE,
                 "loss.png", "samples.txt", "best/model.safetensors"):  # fmt: skip
        assert (run / name).is_file(), name
    assert "=== step 40" in (run / "samples.txt").read_text()
    document = json.loads((run / "config.json").read_text())
    assert document["state"]["step"] == 40 and document["train"]["max_steps"] == 40
    # model.safetensors (for users) and train_state.pt (for --resume) hold the same weights
    assert_same(load_checkpoint(run).state_dict(), load_train_state(run)["model"])


def test_weight_decay_applies_to_matrices_only():
    from quillgpt import DecoderLM

    model = DecoderLM(model_config())
    decay, no_decay = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(names[i].endswith("weight") and "ln" not in names[i] for i in decayed)
    assert id(model.tok_emb.weight) not in decayed  # embedding and tied head
    assert all(p.dim() == 1 for p in no_decay["params"] if p is not model.tok_emb.weight
               and p is not model.pos_emb.embed.weight)  # fmt: skip
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("impl", "fused", "foreach"),
    [
        ("auto", True, None),
        ("fused", True, None),
        ("foreach", None, True),
        ("for-loop", None, False),
    ],
)
def test_optimizer_kernel_choice_and_all_kernels_agree(impl, fused, foreach):
    from quillgpt import DecoderLM

    torch.manual_seed(0)
    model = DecoderLM(model_config())
    reference = copy.deepcopy(model)
    cpu = torch.device("cpu")
    kwargs = dict(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device=cpu)
    opt = build_optimizer(model, impl=impl, **kwargs)
    assert (opt.defaults["fused"], opt.defaults["foreach"]) == (fused, foreach)
    ref_opt = build_optimizer(reference, impl="for-loop", **kwargs)
    for _ in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            for p in m.parameters():
                p.grad = torch.arange(p.numel(), dtype=p.dtype).view_as(p).sin()
            o.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def first_step_gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The gradients the optimiser sees at the first step (after accumulation and clipping)."""
    grads = {}

    def grab(optimizer, args, kwargs):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})

    trainer.optimizer.register_step_pre_hook(grab)
    trainer.fit()
    return grads


def test_accumulation_equals_a_larger_batch(data, tmp_path):
    big = Trainer(model_config(), train_config(tmp_path / "a", batch_size=8, max_steps=3), data)
    small = Trainer(
        model_config(), train_config(tmp_path / "b", batch_size=4, grad_accum=2, max_steps=3), data
    )
    assert_same(first_step_gradients(big), first_step_gradients(small), exact=False)
    assert_same(weights(big.model), weights(small.model), exact=False)


def test_clipping_caps_the_global_norm_and_logs_the_unclipped_one(data, tmp_path):
    trainer = Trainer(model_config(), train_config(tmp_path, grad_clip=0.05, max_steps=2), data)
    seen = []

    def spy(optimizer, args, kwargs):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    trainer.optimizer.register_step_pre_hook(spy)
    trainer.fit()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert seen and all(n <= 0.05 * (1 + 1e-4) for n in seen)
    assert records[-1]["grad_norm"] > 0.05


def test_gradient_checkpointing_gives_the_same_training(data, tmp_path):
    plain = Trainer(model_config(), train_config(tmp_path / "a", max_steps=3), data)
    plain.fit()
    ckpt = Trainer(
        model_config(),
        train_config(tmp_path / "b", max_steps=3, gradient_checkpointing=True),
        data,
    )
    assert ckpt.model.gradient_checkpointing
    ckpt.fit()
    assert_same(weights(plain.model), weights(ckpt.model), exact=False)


@pytest.mark.parametrize(("dropout", "grad_accum"), [(0.0, 1), (0.2, 2)])
def test_sigterm_saves_and_resume_is_exact(data, tmp_path, dropout, grad_accum):
    # With dropout the resumed run must also continue the random masks where they stopped; with
    # accumulation, the data position is counted in micro-batches.
    model = model_config(dropout=dropout)
    settings = dict(max_steps=10, grad_accum=grad_accum)
    reference = Trainer(model, train_config(tmp_path / "ref", **settings), data)
    reference.fit()

    cfg = train_config(tmp_path / "run", **settings)
    first = Trainer(model, cfg, data)
    sigterm_during_step(first, 6)
    result = first.fit()
    assert result.stopped == "SIGTERM" and result.interrupted and result.step == 6
    assert load_train_state(tmp_path / "run")["step"] == 6

    second = Trainer(model, cfg, data, resume=True)
    assert second.step == 6
    assert second.fit().step == 10
    assert_same(weights(reference.model), weights(second.model))
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if r["kind"] == "train"]  # fmt: skip
    assert steps == sorted(set(steps))  # no duplicated lines after the resume


def test_non_finite_steps_are_skipped_then_stop(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=30, max_nonfinite=3, ckpt_interval=2, eval_interval=100)
    trainer = Trainer(model_config(), cfg, data)
    original = trainer.forward
    poisoned = {3}  # the 3rd step alone: skipped, training goes on
    state = {"step": 0, "before": None, "after": None}

    def forward(x, y):
        logits, loss = original(x, y)
        state["step"] += 1
        if state["step"] in poisoned or state["step"] >= 8:
            loss = loss * float("nan")
        return logits, loss

    trainer.forward = forward
    step = trainer._step_on

    def track(micro, fwd):
        before = weights(trainer.model)
        out = step(micro, fwd)
        if state["step"] == 3:
            state["before"], state["after"] = before, weights(trainer.model)
        return out

    trainer._step_on = track
    with pytest.raises(NonFiniteError, match="3 optimiser steps in a row"):
        trainer.fit()
    assert_same(state["before"], state["after"])  # the poisoned step did not move the weights
    assert trainer.nonfinite_total == 4  # step 3, then steps 8, 9, 10
    saved = load_train_state(tmp_path)
    assert saved["step"] == 6  # the last checkpoint before the failures, not step 10
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_grad_scaler_path_skips_overflowing_steps(data, tmp_path):
    trainer = Trainer(model_config(), train_config(tmp_path, max_steps=4), data)
    trainer.precision = Precision(
        torch.device("cpu"), None, torch.amp.GradScaler("cpu", init_scale=2.0**10)
    )
    original = trainer.forward

    def forward(x, y):
        logits, loss = original(x, y)
        return logits, loss * float("inf") if trainer.step == 1 else loss

    trainer.forward = forward
    result = trainer.fit()
    assert result.nonfinite_steps == 1
    assert trainer.precision.scaler.get_scale() < 2.0**10  # the scaler backed off
    assert all(torch.isfinite(v).all() for v in weights(trainer.model).values())


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX-512 BF16)")
def test_bf16_autocast_trains_on_cpu(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=20, precision="bf16", lr=1e-2, eval_interval=10)
    trainer = Trainer(model_config(), cfg, data)
    assert trainer.precision.dtype == torch.bfloat16
    trainer.fit()
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] + 0.1 < 4.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs a CUDA GPU")
def test_fp16_autocast_with_scaler_on_cuda(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=6, precision="fp16", device="cuda")
    trainer = Trainer(model_config(), cfg, data)
    assert trainer.precision.scaler.is_enabled()
    assert trainer.fit().nonfinite_steps <= 2


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning():
    with pytest.warns(UserWarning, match="training in fp32"):
        precision = Precision.for_device(torch.device("cpu"), "fp16")
    assert precision.dtype is None and not precision.scaler.is_enabled()


def test_compile_failure_falls_back_to_eager(data, tmp_path):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    cfg = train_config(tmp_path, max_steps=2, compile="on")
    trainer = Trainer(model_config(), cfg, data, compile_backend=broken_backend)
    assert trainer.forward is not trainer.wrapped
    with pytest.warns(UserWarning, match="torch.compile failed"):
        result = trainer.fit()
    assert trainer.forward is trainer.wrapped and result.step == 2


def test_failed_save_is_reported_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    import quillgpt.training.state as state_module

    lines = []
    cfg = train_config(tmp_path, max_steps=8, ckpt_interval=2, eval_interval=100)
    trainer = Trainer(model_config(), cfg, data, log=lines.append)
    real = state_module.atomic_write

    def disk_full(path, write):
        if trainer.step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(state_module, "atomic_write", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        trainer.fit()  # periodic failures are warnings; the final save must succeed
    assert any("checkpoint at step 4 failed" in line for line in lines)
    assert load_train_state(tmp_path)["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_refuses_another_model_or_tokenizer(data, tmp_path, tmp_path_factory):
    cfg = train_config(tmp_path, max_steps=2)
    Trainer(model_config(), cfg, data).fit()
    with pytest.raises(QuillError, match="already holds a run"):
        Trainer(model_config(), cfg, data)
    with pytest.raises(CheckpointError, match="model config differs.*n_layer"):
        Trainer(model_config(n_layer=3), cfg, data, resume=True)
    other = prepare(tmp_path_factory.getbasetemp() / "train-data", seed=1)
    with pytest.raises(CheckpointError, match="tokenizer differs"):
        Trainer(model_config(), cfg, other, resume=True)


def test_time_budget_ends_the_run(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=None, max_time=2.0, eval_interval=1000)
    result = Trainer(model_config(), cfg, data).fit()
    assert result.stopped == "max_time"  # the schedule's fitted last step, or the clock
    assert result.step > 10
    saved = load_train_state(tmp_path)
    assert saved["scheduler"]["lr_lambdas"][0]["max_steps"] is not None  # fitted and saved
    weights_file = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights_file.values())


def test_tensorboard_events_when_asked(data, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    Trainer(model_config(), train_config(tmp_path, max_steps=2, tensorboard=True), data).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
