"""Peak memory of a training step with and without gradient (activation) checkpointing.

A long-context configuration (default: 8 layers, 512 wide, 8 heads, context 1024, batch 4,
vocabulary 2048, fp32) takes forward + backward + AdamW steps. Without checkpointing every block
keeps its activations for the backward pass; with ``model.gradient_checkpointing = True`` each
block keeps only its input and recomputes the rest during the backward pass.

Memory is measured in a fresh process per variant, so nothing else is counted:

* on a GPU, ``torch.cuda.max_memory_allocated`` over the steps (tensors only);
* on a CPU, the process's peak resident set size (``ru_maxrss``), reported both as a whole and
  as the growth over the process after building the model and the optimiser (``step_mb``).

Step time is measured in one process, alternating between the two variants after warm-up
(medians), so the ratio is trustworthy on a noisy machine.

    flock /tmp/quillgpt-bench.lock python benchmarks/bench_memory.py [--batch 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings

import torch

from quillgpt import DecoderLM, ModelConfig
from quillgpt.device import (
    peak_memory_bytes,
    reset_peak_memory,
    resolve_device,
    synchronize,
)

from common import emit, median, time_alternating

MB = 2**20


def build(args: argparse.Namespace, checkpointing: bool, device: torch.device):
    cfg = ModelConfig(
        vocab_size=args.vocab,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        pos_encoding="rope",
        bias=False,
    )
    torch.manual_seed(0)
    model = DecoderLM(cfg).to(device).train()
    model.gradient_checkpointing = checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    x = torch.randint(0, args.vocab, (args.batch, args.block_size), device=device)

    def step() -> None:
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def measure_child(args: argparse.Namespace) -> None:
    """Run in a fresh process: build, note the memory, take steps, print the peak as JSON."""
    device = resolve_device(args.device)
    _, step = build(args, args.child == "on", device)
    synchronize(device)
    before = peak_memory_bytes(device)
    reset_peak_memory(device)
    for _ in range(args.steps):
        step()
    synchronize(device)
    peak = peak_memory_bytes(device)
    print(json.dumps({"before": before, "peak": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_layer", type=int, default=8)
    parser.add_argument("--n_embd", type=int, default=512)
    parser.add_argument("--n_head", type=int, default=8)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2, help="steps per memory measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.child:
        measure_child(args)
        return

    device = resolve_device(args.device)
    passthrough = [a for a in sys.argv[1:] if a != "--child"]
    memory = {}
    for variant in ("off", "on"):
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--child", variant],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        memory[variant] = json.loads(out.strip().splitlines()[-1])

    fns = {}
    for variant in ("off", "on"):
        _, fns[variant] = build(args, variant == "on", device)
    times = time_alternating(fns, warmup=1, repeats=args.repeats, device=str(device))

    shape = (
        f"L{args.n_layer} C{args.n_embd} H{args.n_head} T{args.block_size} B{args.batch} "
        f"V{args.vocab}"
    )
    rows = []
    for variant in ("off", "on"):
        mem = memory[variant]
        row: dict[str, object] = {
            "shape": shape,
            "checkpointing": variant,
            "peak_mb": mem["peak"] / MB,
            "step_s": median(times[variant]),
        }
        if device.type == "cpu":
            row["step_mb"] = (mem["peak"] - mem["before"]) / MB
        rows.append(row)
    off, on = rows
    saving = 1 - on["peak_mb"] / off["peak_mb"]
    slowdown = on["step_s"] / off["step_s"] - 1
    on["peak_saving"] = saving
    on["time_cost"] = slowdown
    off["peak_saving"] = off["time_cost"] = 0.0
    extra = {
        "device": device.type,
        "measure": "peak RSS of a fresh process" if device.type == "cpu" else "max allocated",
        "peak_saving": saving,
        "step_time_cost": slowdown,
    }
    if device.type == "cpu":
        extra["step_memory_saving"] = 1 - on["step_mb"] / off["step_mb"]
    emit("memory", rows, extra)


if __name__ == "__main__":
    main()
