"""Dynamic int8 quantization on this CPU: torch.ao against torchao, speed, size and accuracy.

Three measurements, the three targets of the issue:

1. **Decode speed** of a GPT-2-124M-shaped model (random weights, seed 0): greedy, batch 1,
   ``--prompt-len`` prompt, ``--new-tokens`` new tokens, KV cache; fp32 (``nn.Linear`` and the
   ``DecodeLinear`` layout) against int8 with each backend (and each of torch.ao's x86 engines),
   alternating in one process, medians. torchao's eager CPU path is so slow that it is timed
   separately on ``--slow-tokens`` tokens (``--torchao-compile`` adds it under torch.compile).
2. **Size**: bytes of the quantized layers' weights (int8 data + scales + biases) against their
   fp32 bytes, and the checkpoint files.
3. **Accuracy** on a trained small model (``--run-dir``; by default the ``shakespeare-bpe-cpu``
   preset trained for ``--train-time`` into ``runs/bench-quantize``): validation loss and bits
   per byte over the whole validation split, fp32 against int8 (with and without the head).

    python benchmarks/bench_quantize.py [--repeats 3] [--run-dir runs/shakespeare-bpe-cpu]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from quillgpt import DecoderLM, ModelConfig, save_checkpoint
from quillgpt.checkpoint import WEIGHTS_FILE
from quillgpt.inference.quantize import linear_weight_bytes, quantize_int8
from quillgpt.inference.quantized_checkpoint import save_quantized

from common import emit, markdown_table, median, time_alternating

ROOT = Path(__file__).resolve().parents[1]


def speed_rows(args: argparse.Namespace) -> tuple[list[dict[str, object]], dict[str, object]]:
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.preset("gpt2")).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len))
    int8 = quantize_int8(copy.deepcopy(model), backend="torch.ao")
    contenders = {
        "fp32 nn.Linear": model,
        "fp32 generate (fast path)": model,
        f"int8 torch.ao ({int8.quantization['engine']})": int8,
        "int8 torch.ao (fbgemm)": quantize_int8(copy.deepcopy(model), engine="fbgemm"),
        "int8 torch.ao (onednn)": quantize_int8(copy.deepcopy(model), engine="onednn"),
        "int8 torch.ao, fp32 head": quantize_int8(copy.deepcopy(model), include_head=False),
    }
    n = args.new_tokens

    def generate(m: DecoderLM, fast: bool = True) -> torch.Tensor:
        engine = getattr(m, "quantization", {}).get("engine")
        if engine is not None:
            torch.backends.quantized.engine = engine  # global: set for the model that runs
        return m.generate(prompt, n, fast=fast)

    fns = {
        name: (lambda m=m, plain=name == "fp32 nn.Linear": generate(m, fast=not plain))
        for name, m in contenders.items()
    }
    outputs = {name: fn() for name, fn in fns.items()}
    times = time_alternating(fns, warmup=1, repeats=args.repeats)
    rows: list[dict[str, object]] = []
    base = n / median(times["fp32 nn.Linear"])
    for name, ts in times.items():
        tok_s = n / median(ts)
        same = (outputs[name] == outputs["fp32 nn.Linear"]).float().mean().item()
        rows.append(
            {
                "model": name,
                "new_tokens": n,
                "tok_s": tok_s,
                "vs_fp32": tok_s / base,
                "same_tokens_as_fp32": same,
            }
        )
    # torchao eager: int8 x int8 through torch._int_mm's CPU fallback, far too slow to alternate
    torchao = quantize_int8(copy.deepcopy(model), backend="torchao")
    rows.append(slow_row("int8 torchao (eager)", torchao, prompt, args, base))
    compile_s = None
    if args.torchao_compile:
        torchao.next_token_logits = torch.compile(torchao.next_token_logits, dynamic=True)
        start = time.perf_counter()
        torchao.generate(prompt, 2)  # the first call compiles
        compile_s = time.perf_counter() - start
        rows.append(slow_row("int8 torchao (torch.compile)", torchao, prompt, args, base))
    fp32_bytes = linear_weight_bytes(model)
    int8_bytes = linear_weight_bytes(int8)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / "fp32")
        save_quantized(int8, Path(tmp) / "int8")
        files = {k: (Path(tmp) / k / WEIGHTS_FILE).stat().st_size for k in ("fp32", "int8")}
    size = {
        "quantized_layers": len(int8.quantization["layers"]),
        "fp32_layer_bytes": sum(fp32_bytes.values()),
        "int8_layer_bytes": sum(int8_bytes.values()),
        "int8_fraction_of_fp32": sum(int8_bytes.values()) / sum(fp32_bytes.values()),
        "fp32_file_bytes": files["fp32"],
        "int8_file_bytes": files["int8"],
        "engine": int8.quantization["engine"],
        "torchao_compile_first_call_s": compile_s,
    }
    return rows, size


def slow_row(
    name: str, model: DecoderLM, prompt: torch.Tensor, args: argparse.Namespace, base: float
) -> dict[str, object]:
    """Time ``--slow-tokens`` greedy tokens ``--repeats`` times, after a 2-token warm-up."""
    model.generate(prompt, 2)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.generate(prompt, args.slow_tokens)
        times.append(time.perf_counter() - start)
    tok_s = args.slow_tokens / median(times)
    return {
        "model": name,
        "new_tokens": args.slow_tokens,
        "tok_s": tok_s,
        "vs_fp32": tok_s / base,
        "same_tokens_as_fp32": float("nan"),
    }


def trained_run(args: argparse.Namespace) -> Path:
    if args.run_dir is not None:
        return Path(args.run_dir)
    out = ROOT / "runs" / "bench-quantize"
    if not (out / WEIGHTS_FILE).is_file():
        command = [
            sys.executable,
            "-m",
            "quillgpt.cli",
            "train",
            "--config",
            str(ROOT / "configs" / "shakespeare-bpe-cpu.toml"),
            "--max_time",
            args.train_time,
            "--out_dir",
            str(out),
            "--progress",
            "false",
        ]
        print("training:", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    return out


def accuracy_rows(run_dir: Path, batch_size: int) -> list[dict[str, object]]:
    from quillgpt.inference import evaluate_loaded, load_for_inference, open_eval_data

    rows: list[dict[str, object]] = []
    variants = {
        "fp32": dict(quantize="none"),
        "int8 torch.ao": dict(quantize="int8"),
    }
    reference = None
    for name, options in variants.items():
        loaded = load_for_inference(run_dir, device="cpu", **options)
        data = open_eval_data(loaded)
        result = evaluate_loaded(loaded, data, batch_size=batch_size)
        reference = reference or result
        rows.append(
            {
                "model": name,
                "val_loss": result.loss,
                "val_bpb": result.bpb,
                "loss_rise_pct": 100 * (result.loss / reference.loss - 1),
                "targets": result.targets,
            }
        )
    loaded = load_for_inference(run_dir, device="cpu")
    quantize_int8(loaded.model, include_head=False)
    result = evaluate_loaded(loaded, open_eval_data(loaded), batch_size=batch_size)
    rows.append(
        {
            "model": "int8 torch.ao, fp32 head",
            "val_loss": result.loss,
            "val_bpb": result.bpb,
            "loss_rise_pct": 100 * (result.loss / reference.loss - 1),
            "targets": result.targets,
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--slow-tokens", type=int, default=8, help="tokens timed for torchao")
    parser.add_argument("--run-dir", default=None, help="trained checkpoint for the accuracy part")
    parser.add_argument("--train-time", default="3m", help="budget when training one")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--torchao-compile",
        action="store_true",
        help="also time torchao under torch.compile (minutes of compilation)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows, size = speed_rows(args)
    print(markdown_table([size]))
    accuracy: list[dict[str, object]] = []
    run_dir = None
    if not args.skip_accuracy:
        run_dir = trained_run(args)
        accuracy = accuracy_rows(run_dir, args.eval_batch_size)
        print(markdown_table(accuracy))
    emit(
        "quantize",
        rows,
        {
            "model": "gpt2 shape (124M), random weights, batch 1, greedy",
            "prompt_len": args.prompt_len,
            "repeats": args.repeats,
            "size": size,
            "accuracy_run": str(run_dir) if run_dir else None,
            "accuracy": accuracy,
        },
    )


if __name__ == "__main__":
    main()
