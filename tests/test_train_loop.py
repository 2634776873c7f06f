"""The training loop on a tiny corpus: learning, accumulation, clipping, AMP, resume, failures."""

from __future__ import annotations

import copy
import errno
import json
import math
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from quillgpt import DecoderLM, load_checkpoint
from quillgpt.device import cpu_supports_bf16
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.training import NonFiniteError, TrainConfig, train
from quillgpt.training.loop import loss_of, train_step
from quillgpt.training.metrics import read_metrics
from quillgpt.training.optim import build_optimizer, param_groups
from quillgpt.training.parallel import Parallel
from quillgpt.training.precision import Precision
from quillgpt.training.run_dir import TRAIN_STATE_FILE, load_train_state
from train_utils import (
    assert_same,
    fresh_model,
    model_config,
    prepare,
    sigterm_during_step,
    train_config,
    weights,
)


def test_loss_goes_down_and_run_directory_is_complete(data, tmp_path):
    cfg = train_config(tmp_path / "run", max_steps=40, eval_interval=20, num_samples=1,
                       sample_tokens=20, final_eval=True, lr=1e-2)  # fmt: skip
    result = train(model_config(), cfg, data)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.8
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert result.stopped == "max_steps" and result.state.step == 40
    assert result.final_eval is not None and result.final_eval.bpb > 0
    # bits per byte = nats per token / ln 2 * tokens per byte (char level: ~1 token per byte)
    tokens_per_byte = (data.val_tokens - 1) / data.val_bytes
    assert result.final_eval.bpb == pytest.approx(
        result.final_eval.loss / math.log(2) * tokens_per_byte
    )
    for key in ("step", "tokens", "elapsed", "loss", "lr", "grad_norm", "tokens_per_s",
                "peak_memory_mb"):  # fmt: skip
        assert key in steps[-1]
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
    loop = load_train_state(run)["loop"]  # the resume state: the loop's counters, as one dict
    assert loop["step"] == 40 and loop["tokens"] == 40 * cfg.batch_size * 16
    assert {k: document["state"][k] for k in loop} == loop
    # model.safetensors (for users) and train_state.pt (for --resume) hold the same weights
    assert_same(load_checkpoint(run).state_dict(), load_train_state(run)["model"])


def test_weight_decay_applies_to_matrices_only():
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
    torch.manual_seed(0)
    model = DecoderLM(model_config())
    reference = copy.deepcopy(model)
    opt = build_optimizer(model, TrainConfig(lr=1e-2, optimizer_impl=impl))
    assert (opt.defaults["fused"], opt.defaults["foreach"]) == (fused, foreach)
    ref_opt = build_optimizer(reference, TrainConfig(lr=1e-2, optimizer_impl="for-loop"))
    for _ in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            for p in m.parameters():
                p.grad = torch.arange(p.numel(), dtype=p.dtype).view_as(p).sin()
            o.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def first_step_gradients(model: DecoderLM, cfg: TrainConfig, data) -> dict[str, torch.Tensor]:
    """Train ``model``; return the gradients its first optimiser step saw (accumulated, clipped)."""
    grads: dict[str, torch.Tensor] = {}

    def grab(optimizer, args, kwargs):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in model.named_parameters()})

    handle = register_optimizer_step_pre_hook(grab)
    try:
        train(None, cfg, data, model=model)
    finally:
        handle.remove()
    return grads


def test_accumulation_equals_a_larger_batch(data, tmp_path):
    big, small = fresh_model(data), fresh_model(data)
    big_grads = first_step_gradients(
        big, train_config(tmp_path / "a", batch_size=8, max_steps=3), data
    )
    small_grads = first_step_gradients(
        small, train_config(tmp_path / "b", batch_size=4, grad_accum=2, max_steps=3), data
    )
    assert_same(big_grads, small_grads, exact=False)
    assert_same(weights(big), weights(small), exact=False)


def test_clipping_caps_the_global_norm_and_logs_the_unclipped_one(data, tmp_path):
    model = fresh_model(data)
    seen = []

    def spy(optimizer, args, kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    handle = register_optimizer_step_pre_hook(spy)
    try:
        train(None, train_config(tmp_path, grad_clip=0.05, max_steps=2), data, model=model)
    finally:
        handle.remove()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert seen and all(n <= 0.05 * (1 + 1e-4) for n in seen)
    assert records[-1]["grad_norm"] > 0.05


def test_gradient_checkpointing_gives_the_same_training(data, tmp_path):
    plain, ckpt = fresh_model(data), fresh_model(data)
    train(None, train_config(tmp_path / "a", max_steps=3), data, model=plain)
    cfg = train_config(tmp_path / "b", max_steps=3, gradient_checkpointing=True)
    train(None, cfg, data, model=ckpt)
    assert ckpt.gradient_checkpointing
    assert_same(weights(plain), weights(ckpt), exact=False)


@pytest.mark.parametrize(("dropout", "grad_accum"), [(0.0, 1), (0.2, 2)])
def test_sigterm_saves_and_resume_is_exact(data, tmp_path, dropout, grad_accum):
    # With dropout the resumed run must also continue the random masks where they stopped; with
    # accumulation, the data position is counted in micro-batches.
    settings = dict(max_steps=10, grad_accum=grad_accum)
    reference = fresh_model(data, dropout=dropout)
    train(None, train_config(tmp_path / "ref", **settings), data, model=reference)

    cfg = train_config(tmp_path / "run", **settings)
    first = fresh_model(data, dropout=dropout)
    sigterm_during_step(first, 6, grad_accum)
    result = train(None, cfg, data, model=first)
    assert result.stopped == "SIGTERM" and result.interrupted and result.state.step == 6
    assert load_train_state(tmp_path / "run")["loop"]["step"] == 6

    second = fresh_model(data, dropout=dropout, seed=99)  # the checkpoint replaces its weights
    lines = []
    assert train(None, cfg, data, model=second, resume=True, log=lines.append).state.step == 10
    assert any("resumed" in line and "at step 6" in line for line in lines)
    assert_same(weights(reference), weights(second))
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if r["kind"] == "train"]  # fmt: skip
    assert steps == sorted(set(steps))  # no duplicated lines after the resume


class Poisoned(DecoderLM):
    """A DecoderLM whose loss is NaN on the given training forward passes (1-based)."""

    def __init__(self, config, poisoned) -> None:
        super().__init__(config)
        self.poisoned, self.calls, self.seen = poisoned, 0, {}

    def forward(self, idx, targets=None, **kwargs):
        logits, loss = super().forward(idx, targets, **kwargs)
        if not self.training:
            return logits, loss
        self.calls += 1
        self.seen[self.calls] = weights(self)  # the weights this step starts from
        return logits, loss * float("nan") if self.poisoned(self.calls) else loss


def test_non_finite_steps_are_skipped_then_stop(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=30, max_nonfinite=3, ckpt_interval=2, eval_interval=100)
    torch.manual_seed(0)
    # the 3rd step alone (skipped, training goes on), then every step from the 8th
    model = Poisoned(model_config(vocab_size=data.vocab_size), lambda n: n == 3 or n >= 8)
    with pytest.raises(NonFiniteError, match="3 optimiser steps in a row"):
        train(None, cfg, data, model=model)
    assert_same(model.seen[3], model.seen[4])  # the poisoned step did not move the weights
    assert model.calls == 10  # steps 8, 9, 10 were the three in a row
    saved = load_train_state(tmp_path)
    assert saved["loop"]["step"] == 6  # the last checkpoint before the failures, not step 10
    assert saved["loop"]["nonfinite_total"] == 1  # step 3 (the later ones came after)
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_the_grad_scaler_path_skips_an_overflowing_step(data):
    from quillgpt.data import make_train_loader

    torch.manual_seed(0)
    model = Poisoned(model_config(vocab_size=data.vocab_size), lambda n: n == 2)
    optimizer = build_optimizer(model, TrainConfig())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # as fp16 would use on a GPU
    precision = Precision(torch.device("cpu"), None, scaler)
    par = Parallel(torch.device("cpu"))
    batches = iter(make_train_loader(data, 16, 4, seed=0))
    norms = [
        train_step(
            loss_of(model), model, optimizer, [next(batches)], precision, par, grad_clip=1.0
        )[1]
        for _ in range(3)
    ]
    assert math.isfinite(norms[0]) and not math.isfinite(norms[1]) and math.isfinite(norms[2])
    assert_same(model.seen[2], model.seen[3])  # the overflowing step did not move the weights
    first, second = model.seen[1], model.seen[2]
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the good step did
    assert scaler.get_scale() < 2.0**10  # the scaler backed off


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX-512 BF16)")
def test_bf16_autocast_trains_on_cpu(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=20, precision="bf16", lr=1e-2, eval_interval=10)
    train(model_config(), cfg, data)
    assert json.loads((tmp_path / "config.json").read_text())["state"]["precision"] == "bf16"
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] + 0.1 < 4.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs a CUDA GPU")
def test_fp16_autocast_with_scaler_on_cuda(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=6, precision="fp16", device="cuda")
    result = train(model_config(), cfg, data)
    assert json.loads((tmp_path / "config.json").read_text())["state"]["precision"] == "fp16"
    assert result.state.nonfinite_total <= 2


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning():
    with pytest.warns(UserWarning, match="training in fp32"):
        precision = Precision.for_device(torch.device("cpu"), "fp16")
    assert precision.dtype is None and not precision.scaler.is_enabled()


def test_compile_failure_falls_back_to_eager(data, tmp_path):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    model = fresh_model(data)
    cfg = train_config(tmp_path / "a", max_steps=2, compile="on")
    with pytest.warns(UserWarning, match="torch.compile failed"):
        result = train(None, cfg, data, model=model, compile_backend=broken_backend)
    assert result.state.step == 2
    eager = fresh_model(data)
    train(None, train_config(tmp_path / "b", max_steps=2), data, model=eager)
    assert_same(weights(model), weights(eager))  # the failed attempt left no trace


class FailsAt(DecoderLM):
    """A DecoderLM whose ``n``-th training forward pass raises (as running out of memory does)."""

    def __init__(self, config, n: int) -> None:
        super().__init__(config)
        self.n, self.calls = n, 0

    def forward(self, idx, targets=None, **kwargs):
        if self.training:
            self.calls += 1
            if self.calls == self.n:
                raise RuntimeError("out of memory (simulated)")
        return super().forward(idx, targets, **kwargs)


@pytest.mark.parametrize("n", [1, 3])
def test_other_errors_are_not_taken_for_compiler_failures(data, tmp_path, n):
    # With a working (trivial) backend, an error of the model itself, on the first step or later,
    # is raised as it is: not relabelled "torch.compile failed" and not retried eagerly.
    model = FailsAt(model_config(vocab_size=data.vocab_size), n)
    cfg = train_config(tmp_path, max_steps=4, compile="on")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning
        with pytest.raises(RuntimeError, match="out of memory"):
            train(None, cfg, data, model=model, compile_backend="eager")


def test_failed_save_is_reported_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    import quillgpt.training.run_dir as run_dir_module

    lines = []
    cfg = train_config(tmp_path, max_steps=8, ckpt_interval=2, eval_interval=100)
    real = run_dir_module.atomic_write

    def disk_full(path, write):
        if (tmp_path / TRAIN_STATE_FILE).exists():  # every save after the first (step 2)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(run_dir_module, "atomic_write", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        train(model_config(), cfg, data, log=lines.append)  # the final save must succeed
    assert any("checkpoint at step 4 failed" in line for line in lines)
    assert load_train_state(tmp_path)["loop"]["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_refuses_another_model_or_tokenizer(data, tmp_path, tmp_path_factory):
    cfg = train_config(tmp_path, max_steps=2)
    train(model_config(), cfg, data)
    with pytest.raises(QuillError, match="already holds a run"):
        train(model_config(), cfg, data)
    with pytest.raises(CheckpointError, match="model config differs.*n_layer"):
        train(model_config(n_layer=3), cfg, data, resume=True)
    other = prepare(tmp_path_factory.getbasetemp() / "train-data", seed=1)
    with pytest.raises(CheckpointError, match="tokenizer differs"):
        train(model_config(), cfg, other, resume=True)


def test_time_budget_ends_the_run(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=None, max_time=2.0, eval_interval=1000)
    result = train(model_config(), cfg, data)
    assert result.stopped == "max_time" and result.state.elapsed >= 2.0
    assert result.state.step > 10
    assert load_train_state(tmp_path)["loop"]["elapsed"] == result.state.elapsed
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    lrs = [r["lr"] for r in records if r["step"] > cfg.warmup_steps]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.5 * cfg.lr  # decays with the clock
    weights_file = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights_file.values())


def test_tensorboard_missing_is_one_line_and_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    cfg = train_config(tmp_path / "run", max_steps=2, tensorboard=True)
    with pytest.raises(QuillError, match="needs the tensorboard package"):
        train(model_config(), cfg, data)
    assert not (tmp_path / "run").exists()


def test_tensorboard_events_when_asked(data, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    train(model_config(), train_config(tmp_path, max_steps=2, tensorboard=True), data)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
