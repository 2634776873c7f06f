"""Training compile: what ``compiled`` returns, its eager fallback, and where its cache lives.

One test compiles for real with inductor (the tiny preset, fp32); the others use backends that
fail or do nothing, which cost no C++ compilation.
"""

from __future__ import annotations

import os

import pytest
import torch

from quillgpt import DecoderLM, ModelConfig
from quillgpt.training import compiling
from quillgpt.training.compiling import (
    CACHE_ENV,
    compiled,
    first_compiled_step,
    inductor_cache_dir,
    keep_compiled_code,
)
from quillgpt.training.loop import loss_of

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _restore_cache_env(monkeypatch):
    # compiled() sets TORCHINDUCTOR_CACHE_DIR for the process: undo it after each test.
    if CACHE_ENV in os.environ:
        monkeypatch.setenv(CACHE_ENV, os.environ[CACHE_ENV])
    else:
        monkeypatch.delenv(CACHE_ENV, raising=False)


@pytest.fixture
def unset_cache_env(monkeypatch, tmp_path):
    """No cache directory chosen by the user; ``XDG_CACHE_HOME`` in ``tmp_path``."""
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setattr(compiling, "_CHOSEN_BEFORE_IMPORT", False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "quillgpt" / "inductor"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny(n_layer: int = 2) -> DecoderLM:
    """The tiny preset with rotary positions, as the demo has."""
    torch.manual_seed(0)
    return DecoderLM(ModelConfig.preset("tiny", n_layer=n_layer, pos_encoding="rope")).train()


def batch(model: DecoderLM, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(model.config.vocab_size, (b, model.config.block_size), generator=g)
    return x, torch.roll(x, -1, dims=1)


def loss_and_grads(loss_fn, model, x, y):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_inductor_gives_the_eager_loss_and_gradients():
    # Three layers: hierarchical compilation (nested_compile_region) got every block's gradients
    # but the last one's wrong here in fp32 (torch 2.13), which is why it is not used.
    # What the trainer compiles: the loss alone, without the logits as an output.
    model = tiny(n_layer=3)
    loss_fn = compiled(loss_of(model), "on", CPU, "inductor")
    for seed in (0, 1):  # the second step runs the compiled code without compiling again
        x, y = batch(model, seed=seed)
        want_loss, want_grads = loss_and_grads(loss_of(model), model, x, y)
        loss, grads = loss_and_grads(loss_fn, model, x, y)
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_on_off_and_auto(monkeypatch):
    model = tiny()
    assert compiled(model, "off", CPU, "inductor") is model
    monkeypatch.setattr(compiling, "compiler_pays_off", lambda device: False)
    assert compiled(model, "auto", CPU, "inductor") is model
    monkeypatch.setattr(compiling, "compiler_pays_off", lambda device: True)
    for mode in ("auto", "on"):
        forward = compiled(model, mode, CPU, "inductor")
        assert isinstance(forward, torch._dynamo.eval_frame.OptimizedModule)
        assert forward._orig_mod is model


def test_a_compiler_failure_falls_back_to_the_eager_model():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    forward = compiled(model, "on", CPU, broken_backend)
    x, y = batch(model)
    want_loss, want_grads = loss_and_grads(loss_of(model), model, x, y)
    model.zero_grad(set_to_none=True)
    used = []

    def step(fwd, micro_batches):
        used.append(fwd)
        ((bx, by),) = micro_batches
        _, loss = fwd(bx, by)
        loss.backward()
        return float(loss.detach()), 0.0

    with pytest.warns(UserWarning, match="torch.compile failed"):
        result, (loss, _) = first_compiled_step(step, forward, model, [(x, y)], optimizer)
    assert result is model and used == [forward, model]
    assert loss == pytest.approx(float(want_loss))
    for name, p in model.named_parameters():  # the failed attempt left no gradient behind
        torch.testing.assert_close(p.grad, want_grads[name], msg=name)


def test_the_cache_goes_to_a_directory_that_outlives_tmp(unset_cache_env):
    assert inductor_cache_dir() == unset_cache_env
    compiled(tiny(), "on", CPU, "eager")
    assert os.environ[CACHE_ENV] == str(unset_cache_env)
    assert unset_cache_env.is_dir()


def test_inductors_own_default_is_taken_over(unset_cache_env, monkeypatch):
    # Importing torch._dynamo (an optimiser's constructor does) sets the variable to the default.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(CACHE_ENV, default_cache_dir())
    keep_compiled_code()
    assert os.environ[CACHE_ENV] == str(unset_cache_env)


def test_without_xdg_cache_home_the_cache_is_under_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert inductor_cache_dir() == tmp_path / ".cache" / "quillgpt" / "inductor"


def test_a_chosen_cache_directory_is_kept(unset_cache_env, monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    compiled(tiny(), "on", CPU, "eager")
    assert os.environ[CACHE_ENV] == str(tmp_path / "mine")
    assert not unset_cache_env.exists()
    # Set before quillgpt was imported, even inductor's default is the user's choice.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setattr(compiling, "_CHOSEN_BEFORE_IMPORT", True)
    monkeypatch.setenv(CACHE_ENV, default_cache_dir())
    keep_compiled_code()
    assert os.environ[CACHE_ENV] == default_cache_dir()


def test_compilation_off_leaves_the_cache_setting_alone(unset_cache_env):
    compiled(tiny(), "off", CPU, "inductor")
    assert CACHE_ENV not in os.environ


def test_an_unwritable_cache_home_leaves_inductors_default(unset_cache_env, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    keep_compiled_code()
    assert CACHE_ENV not in os.environ
