"""The optimiser options (AdamW, Muon + AdamW) and the schedules (wsd, Muon's momentum warm-up)."""

from __future__ import annotations

import io

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from quillgpt import DecoderLM
from quillgpt.errors import CheckpointError, ConfigError
from quillgpt.training import TrainConfig, train
from quillgpt.training import muon as muon_module
from quillgpt.training.config import build_configs
from quillgpt.training.metrics import read_metrics
from quillgpt.training.muon import Muon, newton_schulz_dtype, orthogonalize
from quillgpt.training.optim import MuonAndAdamW, build_optimizer, param_groups
from quillgpt.training.run_dir import load_train_state
from quillgpt.training.schedule import budget_progress, lr_at, lr_factor, muon_momentum_at
from train_utils import (
    assert_same,
    fresh_model,
    model_config,
    sigterm_during_step,
    train_config,
    weights,
)

COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch's (Keller Jordan's) quintic
BLOCK_MATRICES = ("attn.qkv.weight", "attn.proj.weight", "ffn.fc.weight", "ffn.proj.weight")


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.double())


def with_gradients(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator)


# ---------------------------------------------------------------- which parameters go where


@pytest.mark.parametrize(("tie_weights", "bias"), [(True, False), (False, True)])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(tie_weights, bias):
    model = DecoderLM(model_config(tie_weights=tie_weights, bias=bias))
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon"))
    assert isinstance(optimizer, MuonAndAdamW)
    names = {id(p): n for n, p in model.named_parameters()}  # a tied head is listed once
    in_muon = [names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]]
    in_adamw = [names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]]
    assert sorted(in_muon + in_adamw) == sorted(names.values())  # each exactly once
    expected = {f"blocks.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES}
    assert set(in_muon) == expected and len(in_muon) == len(expected)
    qkv, other = optimizer.muon.param_groups
    assert qkv["ns_chunks"] == 3 and all(names[id(p)].endswith("qkv.weight") for p in qkv["params"])
    assert other["ns_chunks"] == 1
    # AdamW decays only an untied head (an empty group is left out: FSDP's checkpoints need it)
    groups = [
        ([names[id(p)] for p in g["params"]], g["weight_decay"])
        for g in optimizer.adamw.param_groups
    ]
    assert len(groups) == (1 if tie_weights else 2)
    assert (["lm_head.weight"], 0.1) in groups or tie_weights
    assert "tok_emb.embed.weight" in groups[-1][0] and groups[-1][1] == 0.0
    # the groups of both, as one optimiser: AdamW's first (the loop logs group 0's rate)
    assert optimizer.param_groups == optimizer.adamw.param_groups + optimizer.muon.param_groups


def test_adamw_stays_one_torch_adamw_with_the_same_groups_and_state():
    model = DecoderLM(model_config())
    optimizer = build_optimizer(model, TrainConfig())
    assert type(optimizer) is torch.optim.AdamW
    reference = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True)
    with_gradients(model)
    optimizer.step()
    state, expected = optimizer.state_dict(), reference.state_dict()
    assert [g.keys() for g in state["param_groups"]] == [g.keys() for g in expected["param_groups"]]
    assert state.keys() == expected.keys()


# ---------------------------------------------------------------- Muon's step


@pytest.mark.parametrize("shape", [(24, 24), (40, 16), (16, 40)])
def test_bf16_newton_schulz_is_torchs_muon_and_fp32_is_within_bf16_rounding(shape):
    torch.manual_seed(0)
    start = torch.randn(shape)
    params = {name: torch.nn.Parameter(start.clone()) for name in ("torch", "bf16", "fp32")}
    optimizers = {
        "torch": torch.optim.Muon([params["torch"]], lr=0.02),
        "bf16": Muon([params["bf16"]], lr=0.02, dtype=torch.bfloat16),
        "fp32": Muon([params["fp32"]], lr=0.02, dtype=torch.float32),
    }
    for _ in range(3):
        grad = torch.randn(shape)
        for name, optimizer in optimizers.items():
            params[name].grad = grad.clone()
            optimizer.step()
    assert torch.equal(params["bf16"], params["torch"])  # the same computation, bit for bit
    assert torch.equal(
        optimizers["bf16"].state[params["bf16"]]["momentum_buffer"],
        optimizers["torch"].state[params["torch"]]["momentum_buffer"],
    )
    moved = (params["torch"] - start).abs().max()
    diff = (params["fp32"] - params["torch"]).abs().max()
    assert 0 < diff < 0.05 * moved  # bf16 keeps 8 bits: a few per cent of a step


def test_fp32_newton_schulz_is_the_iteration_computed_directly():
    torch.manual_seed(0)
    a, b, c = COEFFICIENTS
    for shape in ((32, 32), (48, 16), (16, 48)):
        matrix = torch.randn(shape)
        x = matrix.double().T if shape[0] > shape[1] else matrix.double()  # wide orientation
        x = x / x.norm()
        for _ in range(5):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        expected = x.T if shape[0] > shape[1] else x
        got = orthogonalize(matrix, COEFFICIENTS, 5, 1e-7, torch.float32)
        assert got.dtype == torch.float32 and got.shape == shape
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-5)
        values = singular_values(got)
        assert values.min() > 0.6 and values.max() < 1.25  # near-orthogonal: every direction ~1


def test_fp32_gram_form_of_a_wide_matrix_is_the_written_out_iteration():
    # Twice as wide as tall and more, fp32 iterates on the Gram matrix (fewer products); its
    # rounding differs, most along small singular values: spread them over three decades.
    torch.manual_seed(0)
    a, b, c = COEFFICIENTS
    spread = torch.logspace(-3, 0, 96)
    for shape in ((2, 32, 96), (2, 96, 32)):
        matrix = torch.randn(shape)
        matrix = matrix * (spread if shape[-1] == 96 else spread[:, None])
        x = matrix.double().mT if shape[1] > shape[2] else matrix.double()
        x = x / x.norm(dim=(-2, -1), keepdim=True)
        for _ in range(5):
            gram = x @ x.mT
            x = a * x + (b * gram + c * gram @ gram) @ x
        expected = x.mT if shape[1] > shape[2] else x
        got = orthogonalize(matrix, COEFFICIENTS, 5, 1e-7, torch.float32).double()
        assert ((got - expected).norm() / expected.norm()) < 1e-3
        written_out = orthogonalize(matrix, COEFFICIENTS, 5, 1e-7, torch.bfloat16).double()
        assert ((written_out - expected).norm() / expected.norm()) < 0.05  # bf16: as written
    # Why bf16 keeps the written-out form: with a few dominant directions, as gradients have,
    # the Gram form's 8-bit A and Q lose the small ones entirely.
    x = (torch.randn(2, 32, 96) + 3 * torch.randn(2, 32, 2) @ torch.randn(2, 2, 96)) * spread
    x = (x / x.norm(dim=(-2, -1), keepdim=True)).bfloat16()
    gram_bf16 = muon_module._gram_form(x, COEFFICIENTS, 5).double()
    reference = muon_module._gram_form(x.double(), COEFFICIENTS, 5)
    assert ((gram_bf16 - reference).norm() / reference.norm()) > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batch_is_orthogonalised_matrix_by_matrix(dtype):
    torch.manual_seed(0)
    scales = torch.tensor([1.0, 100.0, 0.0]).view(3, 1, 1)  # each has its own norm; one is zero
    for shape in ((3, 24, 24), (3, 40, 16), (3, 16, 40)):
        batch = torch.randn(shape) * scales
        got = orthogonalize(batch, COEFFICIENTS, 5, 1e-7, dtype)
        assert got.shape == shape and got.dtype == dtype
        for matrix, result in zip(batch, got, strict=True):
            assert torch.equal(result, orthogonalize(matrix, COEFFICIENTS, 5, 1e-7, dtype))
        assert not got[2].any() and got[1].abs().max() < 2  # zero stays zero; scale is gone


def test_the_fused_qkv_matrix_is_orthogonalised_one_third_at_a_time():
    torch.manual_seed(0)
    C = 16
    grad = torch.cat([torch.randn(C, C) * scale for scale in (1.0, 10.0, 100.0)])  # q, k, v
    param = torch.nn.Parameter(torch.zeros(3 * C, C))
    fused = torch.nn.Parameter(torch.zeros(3 * C, C))
    options = dict(lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False, dtype=torch.float32)
    split_opt = Muon([{"params": [param], "ns_chunks": 3}], **options)
    fused_opt = Muon([fused], **options)
    param.grad, fused.grad = grad.clone(), grad.clone()
    split_opt.step()
    fused_opt.step()
    update = -param.detach() / 0.1  # the rate of a C x C block is not scaled (sqrt(3) if fused)
    for third, block in zip(update.chunk(3), grad.chunk(3), strict=True):
        expected = orthogonalize(block, COEFFICIENTS, 5, 1e-7, torch.float32)
        torch.testing.assert_close(third, expected, rtol=0, atol=1e-6)
        values = singular_values(third)
        assert values.min() > 0.6 and values.max() < 1.25
    # orthogonalised whole, the small q gradient would get a far smaller update than v's
    fused_thirds = (-fused.detach()).chunk(3)
    assert singular_values(fused_thirds[0]).max() < 0.1 * singular_values(fused_thirds[2]).max()
    with pytest.raises(ValueError, match="ns_chunks=3 does not divide the 16 rows"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(C, C))], "ns_chunks": 3}])


@pytest.mark.parametrize("native", [True, False])
def test_newton_schulz_runs_in_bf16_only_where_the_cpu_computes_it(monkeypatch, native):
    monkeypatch.setattr(muon_module, "cpu_supports_bf16", lambda: native)
    expected = torch.bfloat16 if native else torch.float32
    assert newton_schulz_dtype(torch.device("cpu")) == expected
    optimizer = build_optimizer(DecoderLM(model_config()), TrainConfig(optimizer="muon"))
    assert optimizer.muon.dtype == expected
    assert newton_schulz_dtype(torch.device("cpu"), "fp32") == torch.float32
    assert newton_schulz_dtype(torch.device("mps")) == torch.float32
    if native:
        assert newton_schulz_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    else:  # emulated bf16 would be hundreds of times slower: fp32, with a warning
        with pytest.warns(UserWarning, match="would be emulated"):
            assert newton_schulz_dtype(torch.device("cpu"), "bf16") == torch.float32


# ---------------------------------------------------------------- state, scaler, resume


def test_state_dict_round_trip_continues_exactly():
    torch.manual_seed(0)
    model = DecoderLM(model_config())
    copy = DecoderLM(model_config())
    copy.load_state_dict(model.state_dict())
    cfg = TrainConfig(optimizer="muon")
    first = build_optimizer(model, cfg)
    for seed in range(2):
        with_gradients(model, seed)
        first.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as train_state.pt is read
    assert saved["optimizer"].keys() == {"adamw", "muon"}
    copy.load_state_dict(saved["model"])
    second = build_optimizer(copy, cfg)
    second.load_state_dict(saved["optimizer"])
    for m, optimizer in ((model, first), (copy, second)):
        with_gradients(m, 7)
        optimizer.step()
    assert_same(weights(model), weights(copy))


def test_the_grad_scaler_unscales_and_steps_both_optimizers():
    torch.manual_seed(0)
    model = DecoderLM(model_config())
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # as fp16 would use on a GPU
    before = weights(model)
    tokens = torch.randint(0, 64, (2, 17))
    scaler.scale(model(tokens[:, :-1], tokens[:, 1:].contiguous())[1]).backward()
    scaled = {n: p.grad.clone() for n, p in model.named_parameters()}
    scaler.unscale_(optimizer)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad * 2.0**10, scaled[name], msg=name)
    scaler.step(optimizer)
    scaler.update()
    after = weights(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)  # Muon's and AdamW's moved


def test_sigterm_then_resume_with_muon_is_exact(data, tmp_path):
    settings = dict(max_steps=10, optimizer="muon", muon_momentum_warmup=4)
    reference = fresh_model(data)
    train(None, train_config(tmp_path / "ref", **settings), data, model=reference)

    cfg = train_config(tmp_path / "run", **settings)
    first = fresh_model(data)
    sigterm_during_step(first, 6)
    assert train(None, cfg, data, model=first).state.step == 6
    saved = load_train_state(tmp_path / "run")["optimizer"]
    assert saved.keys() == {"adamw", "muon"} and saved["muon"]["state"]  # momentum buffers
    second = fresh_model(data, seed=99)  # the checkpoint replaces its weights
    assert train(None, cfg, data, model=second, resume=True).state.step == 10
    assert_same(weights(reference), weights(second))


def test_resume_with_another_optimizer_is_refused(data, tmp_path):
    train(model_config(), train_config(tmp_path, max_steps=4), data)
    with pytest.raises(CheckpointError) as caught:
        train(model_config(), train_config(tmp_path, max_steps=8, optimizer="muon"), data,
              resume=True)  # fmt: skip
    assert "trained with --optimizer adamw" in str(caught.value)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- training with Muon


def test_muon_training_lowers_the_loss_and_each_optimizer_follows_its_own_peak(data, tmp_path):
    cfg = train_config(tmp_path, max_steps=30, log_interval=1, eval_interval=100,
                       optimizer="muon", schedule="wsd", cooldown=0.5, warmup_steps=3,
                       muon_momentum_warmup=10)  # fmt: skip
    seen: list[tuple[str, float, float | None]] = []

    def record(optimizer, args, kwargs):
        group = optimizer.param_groups[0]
        seen.append((type(optimizer).__name__, group["lr"], group.get("momentum")))

    handle = register_optimizer_step_pre_hook(record)  # runs for AdamW and for Muon
    lines: list[str] = []
    try:
        train(model_config(), cfg, data, log=lines.append)
    finally:
        handle.remove()
    assert ", muon wsd, budget 30 steps" in lines[0]  # the run line names what trains
    factors = [lr_factor(cfg, s, budget_progress(s, 0.0, cfg)) for s in range(30)]
    assert [lr for name, lr, _ in seen if name == "AdamW"] == [cfg.lr * f for f in factors]
    muon_steps = [(lr, m) for name, lr, m in seen if name == "Muon"]
    assert muon_steps == [
        (cfg.muon_lr * f, muon_momentum_at(cfg, s)) for s, f in enumerate(factors)
    ]
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    expected = [lr_at(cfg, s, budget_progress(s, 0.0, cfg)) for s in range(30)]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12)  # AdamW's rate
    assert records[-1]["loss"] < records[0]["loss"] - 0.8


# ---------------------------------------------------------------- schedules


def schedule(**fields) -> TrainConfig:
    return TrainConfig(**{"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1, **fields})


def test_wsd_warms_up_holds_the_peak_then_decays_over_the_cooldown():
    cfg = schedule(schedule="wsd", cooldown=0.2, max_steps=101)
    rate = {s: lr_at(cfg, s, budget_progress(s, 0.0, cfg)) for s in range(101)}
    assert rate[0] == pytest.approx(0.1) and rate[4] == pytest.approx(0.5)  # warm-up
    assert all(rate[s] == 1.0 for s in range(9, 80))  # stable: the peak until 80% of the budget
    assert rate[80] == pytest.approx(1.0)  # where the cooldown starts
    assert rate[90] == pytest.approx(0.55)  # halfway through the cooldown
    assert rate[100] == pytest.approx(0.1)  # the last step at the floor
    assert all(rate[s] > rate[s + 1] for s in range(80, 100))  # then down all the way
    whole = schedule(schedule="wsd", cooldown=1.0, warmup_steps=0, max_steps=101)
    linear = schedule(schedule="linear", warmup_steps=0, max_steps=101)
    assert [lr_at(whole, s, s / 100) for s in range(101)] == (
        pytest.approx([lr_at(linear, s, s / 100) for s in range(101)])
    )


def test_wsd_with_a_time_budget_cools_down_over_the_last_part_of_the_time():
    cfg = schedule(schedule="wsd", cooldown=0.4, max_time=100.0, warmup_steps=0)
    rate = {t: lr_at(cfg, 10_000, budget_progress(10_000, t, cfg)) for t in (0, 59, 60, 80, 100)}
    assert rate == pytest.approx({0: 1.0, 59: 1.0, 60: 1.0, 80: 0.55, 100: 0.1})


def test_muon_momentum_rises_from_085_over_its_warmup():
    cfg = TrainConfig(muon_momentum=0.95, muon_momentum_warmup=300)
    momenta = [muon_momentum_at(cfg, s) for s in (0, 150, 299, 300, 10_000)]
    assert momenta == pytest.approx([0.85, 0.90, 0.85 + 0.1 * 299 / 300, 0.95, 0.95])
    assert muon_momentum_at(TrainConfig(muon_momentum_warmup=0), 0) == 0.95


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("optimizer", "sgd", "optimizer: Input should be 'adamw' or 'muon'"),
     ("cooldown", 0.0, "cooldown: Input should be greater than 0"),
     ("cooldown", 1.5, "cooldown: Input should be less than or equal to 1"),
     ("muon_lr", 0.0, "muon_lr: Input should be greater than 0"),
     ("muon_momentum", 1.0, "muon_momentum: Input should be less than 1"),
     ("muon_momentum_warmup", -1, "muon_momentum_warmup: Input should be greater than or equal"),
     ("muon_dtype", "fp16", "muon_dtype: Input should be 'auto', 'bf16' or 'fp32'")],
)  # fmt: skip
def test_bad_optimizer_and_schedule_values_are_one_line_config_errors(field, value, message):
    with pytest.raises(ConfigError) as caught:
        build_configs(train={field: value}, source="run.toml")
    text = str(caught.value)
    assert text.startswith("run.toml [train]: ") and "\n" not in text and message in text, text
