"""Data pipeline speed on the built-in corpus: tokenizer training, tokenizing, loader throughput.

Measures, each as the median of ``--repeats`` runs:

* training a byte-level BPE of 4096 ids on the train split (target: under 15 s on 2 cores);
* tokenizing all of the corpus (both splits) into token files with ``Dataset.map``, for
  ``num_proc`` 1 and 2 (target: under 15 s);
* bytes per token of char vs BPE 1k / 4k / 16k on the held-out validation works;
* loader throughput of ``(x, y)`` batches of 16 x 256 tokens, train and eval, with 0 / 1 / 2
  workers (target: >= 1 M tokens/s), and a per-window ``__getitem__`` loader for comparison.

    flock /tmp/quillgpt-bench.lock python benchmarks/bench_data.py [--repeats 5]

The corpus and prepared files are cached under ``$QUILLGPT_DATA_DIR`` or ``./data``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from quillgpt.data import (
    SPLITS,
    RandomWindowSampler,
    TokenWindows,
    load_corpus,
    make_eval_loader,
    make_train_loader,
    prepare_data,
    train_bpe,
)
from quillgpt.data.tokens import write_token_file

from common import emit, median, time_alternating

BATCH, BLOCK = 16, 256


def loader_rate(loader: DataLoader, batches: int, repeats: int) -> float:
    """Median tokens/s of ``x`` over ``batches`` batches, after 20 warm-up batches."""
    rates = []
    for _ in range(repeats):
        it = iter(loader)
        for _ in range(20):
            next(it)
        start = time.perf_counter()
        tokens = sum(x.numel() for x, _ in itertools.islice(it, batches))
        rates.append(tokens / (time.perf_counter() - start))
    return median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args()
    datasets.disable_progress_bars()

    splits = load_corpus("shakespeare")
    train_texts = list(splits["train"]["text"])
    rows: list[dict[str, object]] = []

    def row(measure: str, value: float, unit: str, target: str = "") -> None:
        rows.append({"measure": measure, "value": round(value, 3), "unit": unit, "target": target})

    tok = train_bpe(train_texts, 4096)

    def tokenize_all(num_proc: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for split in SPLITS:
                write_token_file(
                    splits[split],
                    tok,
                    Path(tmp) / f"{split}.bin",
                    eot=0,
                    dtype=np.dtype(np.uint16),
                    num_proc=num_proc,
                    scratch=Path(tmp) / "scratch",
                )

    times = time_alternating(
        {
            "train": lambda: train_bpe(train_texts, 4096),
            "tokenize1": lambda: tokenize_all(1),
            "tokenize2": lambda: tokenize_all(2),
        },
        warmup=1,
        repeats=args.repeats,
    )
    row("train BPE 4096 on the train split", median(times["train"]), "s", "< 15 s")
    for num_proc in (1, 2):
        seconds = median(times[f"tokenize{num_proc}"])
        row(f"tokenize all 5.06 M chars, BPE 4096, num_proc={num_proc}", seconds, "s", "< 15 s")

    prepare = time_alternating(
        {"prepare": lambda: prepare_data("shakespeare", "bpe", 4096, force=True)},
        warmup=0,
        repeats=args.repeats,
    )
    row("prepare_data end to end (corpus cached), BPE 4096", median(prepare["prepare"]), "s")

    for name, kind, size in [
        ("char", "char", None),
        ("BPE 1k", "bpe", 1024),
        ("BPE 4k", "bpe", 4096),
        ("BPE 16k", "bpe", 16384),
    ]:
        data = prepare_data("shakespeare", kind, size)
        for split in SPLITS:
            per_token = data.num_bytes(split) / data.num_tokens(split)
            row(f"bytes/token, {name}, {split}", per_token, "bytes/token")

    data = prepare_data("shakespeare", "bpe", 4096)
    for workers in (0, 1, 2):
        train = make_train_loader(data, BLOCK, BATCH, num_workers=workers)
        rate = loader_rate(train, args.batches, args.repeats)
        row(
            f"train loader {BATCH}x{BLOCK}, num_workers={workers}", rate / 1e6, "M tokens/s", ">= 1"
        )
    evaluation = make_eval_loader(data, BLOCK, BATCH)
    passes = time_alternating({"eval": lambda: sum(1 for _ in evaluation)}, repeats=args.repeats)
    eval_rate = (data.val_tokens - 1) / median(passes["eval"])
    row(f"eval loader {BATCH}x{BLOCK}, whole validation split", eval_rate / 1e6, "M tokens/s")

    windows = TokenWindows(data.path("train"), data.dtype, BLOCK)
    starts = itertools.chain.from_iterable(
        RandomWindowSampler(data.train_tokens, BLOCK, BATCH, num_steps=10**6)
    )
    naive = DataLoader(
        _PerWindow(windows), batch_size=BATCH, sampler=list(itertools.islice(starts, 10**5))
    )
    naive_rate = loader_rate(naive, min(args.batches, 1000), args.repeats)
    row(
        f"per-window __getitem__ loader {BATCH}x{BLOCK} (comparison)",
        naive_rate / 1e6,
        "M tokens/s",
    )

    emit("data", rows, {"torch_threads": torch.get_num_threads()})


class _PerWindow(torch.utils.data.Dataset):
    """The textbook loader: one ``__getitem__`` per window, stacked by ``default_collate``."""

    def __init__(self, windows: TokenWindows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows[int(start)]


if __name__ == "__main__":
    main()
