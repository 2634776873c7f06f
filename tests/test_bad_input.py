"""The bad-input table (docs/errors.md): every row is a wrong input to a ``quill`` verb.

Each must give one line on stderr that says what to change (no traceback), exit status 2, and
leave every file as it was: same paths, same bytes, same modification times. The rows run the
CLI in-process (``quillgpt.cli.main``) against one workspace built once: a trained run, its
prepared data, files of other programs, and broken copies of each.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quillgpt.cli import main as cli_main
from train_utils import write_corpus

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass(frozen=True)
class Row:
    """One wrong input: the command line, and the words its one-line error must contain.

    Attributes:
        verb: the ``quill`` verb.
        input: what the user got wrong, as the docs table says it.
        argv: the command line after ``quill``, run in the workspace.
        says: a part of the error line (the docs row quotes it).
        without: an optional package simulated as not installed (its import fails).
    """

    verb: str
    input: str
    argv: tuple[str, ...]
    says: str
    without: str | None = None

    @property
    def id(self) -> str:
        return f"{self.verb}: {self.input}"


# A tiny model on the workspace's corpus: should a row be accepted by mistake, it trains in a
# blink (and the test fails on the exit status and the new files).
TRAIN = ("train", "--data", "corpus0", "--tokenizer", "char", "--block_size", "16",
         "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--max_steps", "1",
         "--device", "cpu", "--compile", "off", "--progress", "false", "--final_eval", "false",
         "--out_dir", "new-run")  # fmt: skip
# The runs of the workspace (and of the disk-full test): fp32 on one thread, exactly resumable.
TRAIN_OK = ("train", "--tokenizer", "char", "--block_size", "16", "--n_layer", "2",
            "--n_head", "2", "--n_embd", "32", "--bias", "false", "--batch_size", "4",
            "--max_steps", "4", "--eval_interval", "4", "--eval_tokens", "256",
            "--ckpt_interval", "4", "--num_samples", "0", "--final_eval", "false",
            "--precision", "fp32", "--compile", "off", "--device", "cpu", "--progress", "false",
            "--threads", "1")  # fmt: skip
RESUME = ("train", "--resume", "--device", "cpu", "--compile", "off", "--progress", "false")
GEN = ("generate", "run", "--max-new-tokens", "2", "--device", "cpu")


ROWS: list[Row] = [
    # ---- quill prepare
    Row("prepare", "a path that does not exist", ("prepare", "./no-such.txt"),
        "no such file or folder: ./no-such.txt"),
    Row("prepare", "a folder of another program's files", ("prepare", "random"),
        "no .txt, .jsonl, .json or .parquet files in random"),
    Row("prepare", "an empty .txt file", ("prepare", "texts/empty.txt"),
        "texts/empty.txt has no text (every file is empty); give files that hold text"),
    Row("prepare", "a binary file named .txt", ("prepare", "texts/binary.txt"),
        "is not UTF-8 text (byte 0x80 at offset 128); convert it, e.g. iconv -f latin1 -t utf-8"),
    Row("prepare", "a Latin-1 (not UTF-8) text file", ("prepare", "texts/latin1.txt"),
        "is not UTF-8 text (byte 0xe9 at offset 3); convert it, e.g. iconv -f latin1 -t utf-8"),
    Row("prepare", "a .parquet file that is not Parquet", ("prepare", "texts/bad.parquet"),
        "could not read texts/bad.parquet as parquet: Parquet magic bytes not found"),
    Row("prepare", "a .jsonl file that is not JSON lines", ("prepare", "texts/bad.jsonl"),
        "could not read texts/bad.jsonl as json: JSON parse error"),
    Row("prepare", "--text-column that the files lack",
        ("prepare", "texts/good.jsonl", "--text-column", "body"),
        "has no column 'body' (columns: text); pass --text-column NAME"),
    Row("prepare", "--split that the files lack", ("prepare", "corpus0", "--split", "test"),
        "corpus0 has no split 'test' (it has: train); pass --split"),
    Row("prepare", "--split for the built-in corpus", ("prepare", "shakespeare", "--split", "test"),
        "drop --data-config, --split, --val-split and --text-column"),
    Row("prepare", "a name that is no path and not on the hub (offline)",
        ("prepare", "nobody-here/no-such-corpus"),
        "unknown dataset 'nobody-here/no-such-corpus'"),
    Row("prepare", "--tokenizer file that does not exist",
        ("prepare", "corpus0", "--tokenizer", "no-such/tokenizer.json"),
        "tokenizer file not found: no-such/tokenizer.json"),
    Row("prepare", "--tokenizer file of another program",
        ("prepare", "corpus0", "--tokenizer", "foreign/config.json"),
        "foreign/config.json is not a valid tokenizer.json"),
    Row("prepare", "--tokenizer without an end-of-text token",
        ("prepare", "corpus0", "--tokenizer", "foreign-tokenizer.json"),
        "the tokenizer has no <|endoftext|> token to separate documents; add it"),
    Row("prepare", "--vocab-size 0", ("prepare", "corpus0", "--vocab-size", "0"),
        "--tokenizer_vocab: Input should be greater than or equal to 257, got '0'"),
    Row("prepare", "--vocab-size -5", ("prepare", "corpus0", "--vocab-size", "-5"),
        "--tokenizer_vocab: Input should be greater than or equal to 257, got '-5'"),
    Row("prepare", "--vocab-size that is not a number",
        ("prepare", "corpus0", "--vocab-size", "big"),
        "--tokenizer_vocab: Input should be a valid integer, unable to parse string as an "
        "integer, got 'big'"),
    Row("prepare", "--vocab-size with --tokenizer char",
        ("prepare", "corpus0", "--tokenizer", "char", "--vocab-size", "300"),
        "--tokenizer_vocab applies to --tokenizer bpe only, not to char (it brings its own "
        "vocabulary); drop it"),
    Row("prepare", "--val-fraction 0", ("prepare", "corpus0", "--val-fraction", "0"),
        "--val_fraction: Input should be greater than 0, got '0'"),
    Row("prepare", "--val-fraction 1.5", ("prepare", "corpus0", "--val-fraction", "1.5"),
        "--val_fraction: Input should be less than 1, got '1.5'"),
    Row("prepare", "--num-proc 0", ("prepare", "corpus0", "--num-proc", "0"),
        "num_proc must be at least 1, got 0"),
    Row("prepare", "--seed -1", ("prepare", "corpus0", "--seed", "-1"),
        "--val_seed: Input should be greater than or equal to 0, got '-1'"),
    Row("prepare", "--block-size 0", ("prepare", "corpus0", "--block-size", "0"),
        "--block-size must be >= 1, got 0"),
    Row("prepare", "--data-dir that is a file", ("prepare", "corpus0", "--data-dir", "a-file"),
        "a-file is a file; pass --data-dir (or set QUILLGPT_DATA_DIR) with a folder"),
    # ---- quill train: config files
    Row("train", "--config that does not exist", (*TRAIN, "--config", "no-such.toml"),
        "config file no-such.toml does not exist; see configs/ for presets"),
    Row("train", "--config with another extension", (*TRAIN, "--config", "cfg/run.txt"),
        "config file cfg/run.txt must end in .toml, .yaml, .yml or .json"),
    Row("train", "--config that is not valid TOML", (*TRAIN, "--config", "cfg/broken.toml"),
        "could not parse config file cfg/broken.toml: Expected ']'"),
    Row("train", "--config that is binary", (*TRAIN, "--config", "cfg/binary.toml"),
        "could not parse config file cfg/binary.toml: 'utf-8' codec can't decode byte 0x80"),
    Row("train", "--config that is not UTF-8", (*TRAIN, "--config", "cfg/latin1.toml"),
        "could not parse config file cfg/latin1.toml: 'utf-8' codec can't decode byte 0xe9"),
    Row("train", "--config that is a JSON list", (*TRAIN, "--config", "cfg/list.json"),
        "must hold a table with [model] and [train]"),
    Row("train", "--config with an unknown section",
        (*TRAIN, "--config", "cfg/unknown-section.toml"),
        "has unknown section(s) ['optimiser']; use [model] and [train]"),
    Row("train", "--config with an unknown [model] key",
        (*TRAIN, "--config", "cfg/unknown-model-key.toml"),
        "[model]: unknown ModelConfig field 'n_layers'; did you mean 'n_layer'?"),
    Row("train", "--config with an unknown [train] key",
        (*TRAIN, "--config", "cfg/unknown-train-key.toml"),
        "[train]: unknown TrainConfig field 'learning_rate'; valid fields are"),
    Row("train", "--config with model = 5", (*TRAIN, "--config", "cfg/model-5.toml"),
        "[model] must be a table of key = value"),
    Row("train", '--config with dropout = "0.1" (a string)',
        (*TRAIN, "--config", "cfg/dropout-string.toml"),
        "[model]: ModelConfig.dropout: Input should be a valid number, got '0.1'"),
    Row("train", '--config with bias = "false" (a string)',
        (*TRAIN, "--config", "cfg/bias-string.toml"),
        "[model]: ModelConfig.bias: Input should be a valid boolean, got 'false'"),
    Row("train", "--config with an unknown preset",
        (*TRAIN, "--config", "cfg/unknown-preset.toml"),
        "unknown model preset 'huge'; choose from"),
    Row("train", "--config (YAML) with dropout: 1.5",
        (*TRAIN, "--config", "cfg/big-dropout.yaml"),
        "[model]: ModelConfig.dropout: Input should be less than 1, got 1.5"),
    Row("train", "--config (JSON) with batch_size -4",
        (*TRAIN, "--config", "cfg/negative-batch.json"),
        "[train]: TrainConfig.batch_size: Input should be greater than 0, got -4"),
    # ---- quill train: options
    Row("train", "--n_layer -1", (*TRAIN, "--n_layer", "-1"),
        "--n_layer: Input should be greater than 0, got '-1'"),
    Row("train", "--n_embd 0", (*TRAIN, "--n_embd", "0"),
        "--n_embd: Input should be greater than 0, got '0'"),
    Row("train", "--n_embd not divisible by --n_head", (*TRAIN, "--n_head", "3"),
        "n_embd (16) must be divisible by n_head (3); try n_head=2 or change n_embd"),
    Row("train", "--batch_size 0", (*TRAIN, "--batch_size", "0"),
        "--batch_size: Input should be greater than 0, got '0'"),
    Row("train", "--lr -1", (*TRAIN, "--lr", "-1"), "--lr: Input should be greater than 0"),
    Row("train", "--max_time -5m", (*TRAIN, "--max_time", "-5m"),
        "expected one argument (write a value that starts with '-' as --option=-value)"),
    Row("train", "--max_time=-5m", (*TRAIN, "--max_time=-5m"),
        "--max_time: max_time must be a duration like '5m', '1h30m', '90s' or a number of "
        "seconds, got '-5m'"),
    Row("train", "--max_time soon", (*TRAIN, "--max_time", "soon"),
        "--max_time: max_time must be a duration like '5m'"),
    Row("train", "neither --max_steps nor --max_time", (*TRAIN, "--max_steps", "none"),
        "set max_steps or max_time (e.g. --max_time 5m) so training can end"),
    Row("train", "--bias maybe", (*TRAIN, "--bias", "maybe"),
        "--bias: Input should be a valid boolean"),
    Row("train", "--optimizer that does not exist", (*TRAIN, "--optimizer", "sgd"),
        "argument --optimizer: invalid choice: 'sgd' (choose from 'adamw', 'muon')"),
    Row("train", "--block_size longer than the corpus", (*TRAIN, "--block_size", "100000"),
        "too few for one step of 32 x 1 windows of block_size 100000"),
    Row("train", "--threads 0", (*TRAIN, "--threads", "0"),
        "--threads: Input should be greater than 0, got '0'"),
    Row("train", "an unknown --device", (*TRAIN, "--device", "tpu"),
        "--device: unknown device 'tpu'; choose one of auto, cpu, cuda, mps, xpu"),
    Row("train", "--device cpu:x", (*TRAIN, "--device", "cpu:x"),
        "--device: unknown device 'cpu:x'"),
    Row("train", "--tensorboard without the package", (*TRAIN, "--tensorboard"),
        "--tensorboard needs the tensorboard package: pip install 'quillgpt[tensorboard]'",
        without="torch.utils.tensorboard"),
    # ---- quill train: data
    Row("train", "--data that does not exist", (*TRAIN, "--data", "./no-such-corpus"),
        "no such file or folder: ./no-such-corpus"),
    Row("train", "--data an empty .txt file", (*TRAIN, "--data", "texts/empty.txt"),
        "texts/empty.txt has no text (every file is empty); give files that hold text"),
    Row("train", "--data a binary file", (*TRAIN, "--data", "texts/binary.txt"),
        "texts/binary.txt is not UTF-8 text"),
    Row("train", "--tokenizer file that does not exist",
        (*TRAIN, "--tokenizer", "no-such/tokenizer.json"),
        "tokenizer file not found: no-such/tokenizer.json"),
    # ---- quill train: run directories
    Row("train", "--out_dir that is a file", (*TRAIN, "--out_dir", "a-file"),
        "--out_dir a-file is a file; choose a folder for the run"),
    Row("train", "--out_dir of another program (its own config.json)",
        (*TRAIN, "--out_dir", "foreign"),
        "its config.json is not a quillgpt training run's), and training would write over its "
        "files; choose a new or empty folder"),
    Row("train", "--out_dir of another program (no config.json)",
        (*TRAIN, "--out_dir", "random"),
        "it holds files but no config.json), and training would write over its files"),
    Row("train", "--out_dir holding a run, without --resume", (*TRAIN, "--out_dir", "run"),
        "already holds a run (train_state.pt); pass --resume to continue it, or choose "
        "another --out_dir"),
    Row("train", "--resume with a corrupt train_state.pt",
        (*RESUME, "--out_dir", "run-corrupt-state"),
        "run-corrupt-state/train_state.pt is truncated or corrupt (not a file torch.save "
        "wrote, or one holding more than tensors and numbers); restore it from a copy, or "
        "start a new run with another --out_dir"),
    Row("train", "--resume with a truncated train_state.pt",
        (*RESUME, "--out_dir", "run-truncated-state"),
        "train_state.pt is truncated or corrupt (PytorchStreamReader failed reading zip archive"),
    Row("train", "--resume with an empty train_state.pt",
        (*RESUME, "--out_dir", "run-empty-state"),
        "train_state.pt is truncated or corrupt (the file is empty)"),
    Row("train", "--resume with another model shape",
        (*RESUME, "--out_dir", "run", "--n_layer", "3"),
        "the model config differs from the checkpoint's in n_layer; resume without model "
        "options"),
    Row("train", "--resume with a tokenizer from another run",
        (*RESUME, "--out_dir", "run", "--tokenizer", "other-run/tokenizer.json"),
        "it was trained with --tokenizer char, not other-run/tokenizer.json; resume without "
        "--tokenizer"),
    Row("train", "--resume in a folder of another program", (*RESUME, "--out_dir", "foreign"),
        "--out_dir foreign is not a quillgpt run directory"),
    # ---- quill generate
    Row("generate", "a run directory that does not exist", ("generate", "no-such-run"),
        "no config.json in no-such-run: is this a quillgpt checkpoint?"),
    Row("generate", "a folder of another program (no config.json)", ("generate", "random"),
        "no config.json in random: is this a quillgpt checkpoint?"),
    Row("generate", "a folder with another program's config.json", ("generate", "foreign"),
        "is not a quillgpt checkpoint's config (it has no model section); give the folder of "
        "a quillgpt run or checkpoint"),
    Row("generate", "a Hugging Face model folder", ("generate", "hf-model"),
        "is a Hugging Face transformers config, not a quillgpt one; convert the folder with "
        "quill import-hf"),
    Row("generate", "a config.json that is not JSON", ("generate", "bad-json"),
        "bad-json/config.json is not valid JSON"),
    Row("generate", "a config.json that is a JSON list", ("generate", "config-list"),
        "is not a quillgpt checkpoint's config (not a JSON object)"),
    Row("generate", "a config.json whose model is not a table", ("generate", "model-5"),
        "model-5/config.json is not a quillgpt checkpoint's config"),
    Row("generate", "a truncated model.safetensors", ("generate", "run-truncated-weights"),
        "model.safetensors is unreadable (truncated or corrupt"),
    Row("generate", "a run without tokenizer.json", ("generate", "run-no-tokenizer"),
        "no tokenizer.json in run-no-tokenizer: the model's ids cannot be turned into text"),
    Row("generate", "a tokenizer.json from another run", ("generate", "run-other-tokenizer"),
        "does not match the tokenizer recorded when the model was trained"),
    Row("generate", "a run folder whose weights are in best/ only", ("generate", "run-best-only"),
        "no model.safetensors in run-best-only; did you mean run-best-only/best?"),
    Row("generate", "--prompt-file that does not exist", (*GEN, "--prompt-file", "no-such.txt"),
        "cannot read --prompt-file no-such.txt: No such file or directory"),
    Row("generate", "--prompt-file that is not UTF-8",
        (*GEN, "--prompt-file", "texts/latin1.txt"),
        "--prompt-file texts/latin1.txt is not UTF-8 text (byte 0xe9 at offset 3); convert it"),
    Row("generate", "--prompt-file that is binary", (*GEN, "--prompt-file", "texts/binary.txt"),
        "--prompt-file texts/binary.txt is not UTF-8 text"),
    Row("generate", "--max-new-tokens -1", (*GEN, "--max-new-tokens", "-1"),
        "--max-new-tokens must be >= 0 and --num-samples >= 1"),
    Row("generate", "--max-new-tokens that is not a number", (*GEN, "--max-new-tokens", "ten"),
        "argument --max-new-tokens: invalid int value: 'ten'"),
    Row("generate", "--num-samples 0", (*GEN, "--num-samples", "0"),
        "--max-new-tokens must be >= 0 and --num-samples >= 1"),
    Row("generate", "--temperature -1", (*GEN, "--temperature", "-1"),
        "--temperature must be >= 0 (0 is greedy)"),
    Row("generate", "--top-k 0", (*GEN, "--top-k", "0"), "--top-k must be >= 1"),
    Row("generate", "--top-p 1.5", (*GEN, "--top-p", "1.5"), "--top-p must be in (0, 1]"),
    Row("generate", "--threads 0", (*GEN, "--threads", "0"), "--threads must be >= 1, got 0"),
    Row("generate", "an unknown --device", (*GEN, "--device", "tpu"),
        "argument --device: unknown device 'tpu'"),
    Row("generate", "--quantize int8 with a GPU --device",
        (*GEN, "--quantize", "int8", "--device", "cuda"),
        "int8 models run on the CPU only, but --device cuda was asked; use --device cpu, or "
        "drop --quantize int8"),
    # ---- quill eval
    Row("eval", "a run directory that does not exist", ("eval", "no-such-run"),
        "no config.json in no-such-run: is this a quillgpt checkpoint?"),
    Row("eval", "a folder with another program's config.json", ("eval", "foreign"),
        "is not a quillgpt checkpoint's config (it has no model section)"),
    Row("eval", "a tokenizer.json from another run", ("eval", "run-other-tokenizer"),
        "does not match the tokenizer recorded when the model was trained"),
    Row("eval", "a run whose prepared data is gone", ("eval", "run-data-gone"),
        "is not a prepared dataset (no meta.json)"),
    Row("eval", "a checkpoint that does not record its data", ("eval", "checkpoint-only"),
        "does not say what data the model was trained on; pass --dataset"),
    Row("eval", "--dataset that does not exist", ("eval", "run", "--dataset", "./no-such"),
        "no such file or folder: ./no-such"),
    Row("eval", "--dataset an empty .txt file", ("eval", "run", "--dataset", "texts/empty.txt"),
        "texts/empty.txt has no text (every file is empty); give files that hold text"),
    Row("eval", "--dataset a binary file", ("eval", "run", "--dataset", "texts/binary.txt"),
        "texts/binary.txt is not UTF-8 text"),
    Row("eval", "--batch-size 0", ("eval", "run", "--batch-size", "0"),
        "--batch-size and --max-batches must be >= 1"),
    Row("eval", "--max-batches -1", ("eval", "run", "--max-batches", "-1"),
        "--batch-size and --max-batches must be >= 1"),
    Row("eval", "an unknown --device", ("eval", "run", "--device", "tpu"),
        "argument --device: unknown device 'tpu'"),
    Row("eval", "--split that does not exist", ("eval", "run", "--split", "test"),
        "argument --split: invalid choice: 'test' (choose from 'validation', 'train')"),
    Row("eval", "--text-column without --dataset", ("eval", "run", "--text-column", "body"),
        "options for --dataset only: --text-column; without --dataset the training data is"),
    Row("eval", "--text-column that the --dataset file lacks",
        ("eval", "run", "--dataset", "texts/good.jsonl", "--text-column", "body"),
        "has no column 'body' (columns: text); pass --text-column NAME"),
    Row("eval", "--val-fraction out of range",
        ("eval", "run", "--dataset", "corpus0", "--val-fraction", "2"),
        "--val_fraction: Input should be less than 1, got '2'"),
    # ---- quill quantize
    Row("quantize", "a run directory that does not exist", ("quantize", "no-such-run", "q"),
        "no config.json in no-such-run: is this a quillgpt checkpoint?"),
    Row("quantize", "a folder of another program", ("quantize", "foreign", "q"),
        "no model.safetensors in foreign: is this a quillgpt checkpoint?"),
    Row("quantize", "a truncated model.safetensors", ("quantize", "run-truncated-weights", "q"),
        "model.safetensors is unreadable (truncated or corrupt"),
    Row("quantize", "a tokenizer.json from another run", ("quantize", "run-other-tokenizer", "q"),
        "does not match the tokenizer recorded when the model was trained"),
    Row("quantize", "out_dir the same as run_dir", ("quantize", "run", "run"),
        "out_dir must differ from run_dir: the fp32 checkpoint is kept"),
    Row("quantize", "a run that is already int8", ("quantize", "run-int8", "q"),
        "run-int8 is already int8; quantize its fp32 checkpoint instead"),
    Row("quantize", "out_dir that is a file", ("quantize", "run", "a-file"),
        "out_dir a-file is a file; choose a folder for the int8 checkpoint"),
    Row("quantize", "out_dir holding another run", ("quantize", "run", "other-run"),
        "out_dir other-run already holds files that are not an int8 checkpoint, and they would "
        "be overwritten; choose a new or empty folder"),
    Row("quantize", "out_dir of another program", ("quantize", "run", "foreign"),
        "out_dir foreign already holds files that are not an int8 checkpoint"),
    Row("quantize", "--backend torchao without the package",
        ("quantize", "run", "q", "--backend", "torchao"),
        "the torchao backend needs the torchao package: pip install torchao", without="torchao"),
    # ---- quill profile
    Row("profile", "a run directory that does not exist", ("profile", "no-such-run"),
        "no model.safetensors in no-such-run: is this a quillgpt checkpoint?"),
    Row("profile", "a folder of another program", ("profile", "foreign"),
        "no model.safetensors in foreign: is this a quillgpt checkpoint?"),
    Row("profile", "--seq-len -1", ("profile", "run", "--seq-len", "-1"),
        "--seq-len must be >= 1, got -1"),
    Row("profile", "--batch-size 0", ("profile", "run", "--batch-size", "0"),
        "--batch-size must be >= 1, got 0"),
    Row("profile", "--repeats 0", ("profile", "run", "--repeats", "0"),
        "--repeats must be >= 1, got 0"),
    Row("profile", "an unknown --preset", ("profile", "--preset", "huge"),
        "argument --preset: invalid choice: 'huge'"),
    Row("profile", "an unknown --device", ("profile", "run", "--device", "tpu"),
        "argument --device: unknown device 'tpu'"),
    Row("profile", "--out that is a file", ("profile", "run", "--out", "a-file"),
        "--out a-file is a file; choose a folder for the profile"),
    Row("profile", "--threads 0", ("profile", "run", "--threads", "0"),
        "--threads must be >= 1, got 0"),
    # ---- quill sweep
    Row("sweep", "--grid that is not LAYERSxWIDTH", ("sweep", "--grid", "big"),
        "bad grid entry 'big': use LAYERSxWIDTH, e.g. --grid 2x64,4x256"),
    Row("sweep", "--grid with a zero", ("sweep", "--grid", "0x64"),
        "bad grid entry '0x64': use LAYERSxWIDTH"),
    Row("sweep", "--budget soon", ("sweep", "--budget", "soon"),
        "--budget must be a positive duration like 3m, 1h30m, 90s or a number of seconds, "
        "got 'soon'"),
    Row("sweep", "--budget=-1m", ("sweep", "--budget=-1m"),
        "--budget must be a positive duration like 3m"),
    Row("sweep", "--train-arg without =", ("sweep", "--train-arg", "compile"),
        "--train-arg needs KEY=VALUE, got 'compile'"),
    Row("sweep", "--train-arg that quill train lacks", ("sweep", "--train-arg", "colour=red"),
        "quill train (--train-arg): unrecognized arguments: --colour=red"),
    Row("sweep", "--train-arg with a wrong value", ("sweep", "--train-arg", "lr=-1"),
        "--train-arg: --lr: Input should be greater than 0"),
    Row("sweep", "--out that is a file", ("sweep", "--out", "a-file"),
        "--out a-file is a file; choose a folder"),
    Row("sweep", "--report that is a file", ("sweep", "--report", "a-file"),
        "--report a-file is a file; choose a folder"),
    # ---- quill bench
    Row("bench", "--only a benchmark that does not exist", ("bench", "--only", "nosuch"),
        "no benchmark named nosuch; choose from"),
    # ---- quill export-hf, import-hf, train --init_from
    Row("export-hf", "a run directory that does not exist", ("export-hf", "no-such-run", "out"),
        "no config.json in no-such-run: is this a quillgpt checkpoint?"),
    Row("export-hf", "an output folder that holds files", ("export-hf", "run", "random"),
        "random already exists; remove it or choose another output directory"),
    Row("export-hf", "transformers not installed", ("export-hf", "run", "out"),
        "Hugging Face interop needs transformers: pip install 'quillgpt[hf]'",
        without="transformers"),
    Row("import-hf", "a quillgpt run instead of a transformers folder", ("import-hf", "run", "out"),
        "run is a quillgpt run already: use it as it is, or write it for transformers with "
        "quill export-hf"),
    Row("import-hf", "a folder of another program", ("import-hf", "random", "out"),
        "random is not a directory written by save_pretrained (no config.json)"),
    Row("import-hf", "a transformers folder without a tokenizer.json",
        ("import-hf", "hf-model", "out"),
        "hf-model has no tokenizer.json; save a fast tokenizer there"),
    Row("import-hf", "an output folder that holds files", ("import-hf", "hf-model", "random"),
        "random already exists; remove it or choose another output directory"),
    Row("train", "--init_from a folder that does not exist", (*TRAIN, "--init_from", "./none"),
        "none is not a directory written by save_pretrained (no config.json)"),
    Row("train", "--init_from a quillgpt run", (*TRAIN, "--init_from", "run"),
        "run is a quillgpt run already"),
    # ---- quill itself
    Row("quill", "a verb that does not exist", ("trian",),
        "argument <verb>: invalid choice: 'trian'"),
    # ---- quill train: the data options it shares with quill prepare
    Row("train", "--text_column that the files lack",
        (*TRAIN, "--data", "texts/good.jsonl", "--text_column", "body"),
        "has no column 'body' (columns: text); pass --text-column NAME"),
    Row("train", "--val_split that the files lack", (*TRAIN, "--val_split", "dev"),
        "corpus0 has no split 'dev' (it has: train); pass --val-split"),
    Row("train", "--split for the built-in corpus",
        (*TRAIN, "--data", "shakespeare", "--split", "test"),
        "drop --data-config, --split, --val-split and --text-column"),
    Row("train", "--val_fraction 1", (*TRAIN, "--val_fraction", "1"),
        "--val_fraction: Input should be less than 1, got '1'"),
    Row("train", "--tokenizer_vocab 100",
        (*TRAIN, "--tokenizer", "bpe", "--tokenizer_vocab", "100"),
        "--tokenizer_vocab: Input should be greater than or equal to 257, got '100'"),
    Row("train", "--tokenizer_vocab with --tokenizer char", (*TRAIN, "--tokenizer_vocab", "300"),
        "--tokenizer_vocab applies to --tokenizer bpe only, not to char (it brings its own "
        "vocabulary); drop it"),
    Row("train", "--resume with another --text_column",
        (*RESUME, "--out_dir", "run", "--text_column", "body"),
        "it was trained with --text_column text, not body; resume without --text_column (or "
        "with the run's own value)"),
    Row("train", "--resume with another --val_split",
        (*RESUME, "--out_dir", "run", "--val_split", "dev"),
        "it was trained with --val_split none, not dev; resume without --val_split"),
    # ---- quill export-gguf
    Row("export-gguf", "a run directory that does not exist",
        ("export-gguf", "no-such-run", "m.gguf"), "run_dir no-such-run does not exist"),
    Row("export-gguf", "a run directory that is a file", ("export-gguf", "a-file", "m.gguf"),
        "run_dir a-file is a file; give a quillgpt run or checkpoint directory"),
    Row("export-gguf", "a folder of another program (no config.json)",
        ("export-gguf", "random", "m.gguf"),
        "no config.json in random: is this a quillgpt checkpoint?"),
    Row("export-gguf", "a folder with another program's config.json",
        ("export-gguf", "foreign", "m.gguf"),
        "is not a quillgpt checkpoint's config (it has no model section)"),
    Row("export-gguf", "a Hugging Face model folder", ("export-gguf", "hf-model", "m.gguf"),
        "is a Hugging Face transformers config, not a quillgpt one"),
    Row("export-gguf", "a run folder whose weights are in best/ only",
        ("export-gguf", "run-best-only", "m.gguf"),
        "no model.safetensors in run-best-only; did you mean run-best-only/best?"),
    Row("export-gguf", "a truncated model.safetensors",
        ("export-gguf", "run-truncated-weights", "m.gguf"),
        "model.safetensors is unreadable (truncated or corrupt"),
    Row("export-gguf", "a run without tokenizer.json",
        ("export-gguf", "run-no-tokenizer", "m.gguf"),
        "no tokenizer.json in run-no-tokenizer: the model's ids cannot be turned into text"),
    Row("export-gguf", "a tokenizer.json from another run",
        ("export-gguf", "run-other-tokenizer", "m.gguf"),
        "does not match the tokenizer recorded when the model was trained"),
    Row("export-gguf", "an int8 checkpoint of quill quantize",
        ("export-gguf", "run-int8", "m.gguf"),
        "run-int8 holds int8 weights written by quill quantize; export the fp32 run it was "
        "quantized from"),
    Row("export-gguf", "OUT that is a folder", ("export-gguf", "run", "random"),
        "random is a folder; give the name of the file to write, e.g. model.gguf"),
    Row("export-gguf", "OUT in a folder that does not exist",
        ("export-gguf", "run", "no-such-dir/m.gguf"),
        "the folder no-such-dir does not exist; create it or write elsewhere"),
    Row("export-gguf", "OUT that is a file of another kind", ("export-gguf", "run", "a-file"),
        "a-file exists and is not a GGUF file; it would be overwritten, so choose another name"),
    Row("export-gguf", "--type that does not exist",
        ("export-gguf", "run", "m.gguf", "--type", "q4_0"),
        "argument --type: invalid choice: 'q4_0' (choose from 'f32', 'f16', 'q8_0')"),
    Row("export-gguf", "the gguf package not installed", ("export-gguf", "run", "m.gguf"),
        "GGUF export needs the gguf package: pip install 'quillgpt[gguf]'", without="gguf"),
]  # fmt: skip


# ---- the tests


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()  # the runs train on one thread (--threads 1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The rows' workspace, built once; a pristine copy beside it to restore from."""
    import torch

    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("bad-input") / "workspace"
    root.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("QUILLGPT_DATA_DIR", str(root / "data"))
        build_workspace(root)
    torch.set_num_threads(threads)  # the runs were trained on one thread
    shutil.copytree(root, root.with_name("pristine"), symlinks=True)
    yield root


@pytest.fixture
def in_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch, hub_offline: None) -> Path:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("QUILLGPT_DATA_DIR", str(workspace / "data"))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # generate reads a prompt from stdin
    return workspace


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_one_line_with_status_2_and_nothing_written(row: Row, in_workspace: Path):
    before = snapshot(in_workspace)
    code, err = run_row(row)
    changes = describe_changes(before, snapshot(in_workspace))
    if changes:  # put the workspace back for the other rows before failing this one
        restore(in_workspace)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    prefix = "quill" if row.verb == "quill" else f"quill {row.verb}"
    assert lines[0].startswith(f"{prefix}: error: "), lines[0]
    assert row.says in lines[0]
    assert code == 2
    assert not changes, changes


def test_the_docs_table_is_the_tested_table():
    documented = DOCS.read_text(encoding="utf-8").splitlines()
    table = [line for line in documented if line.startswith("| ") and "---" not in line]
    assert table[1:] == [docs_row(row) for row in ROWS]  # after the header


def test_every_verb_has_rows():
    from quillgpt.cli import VERBS

    assert set(VERBS) <= {row.verb for row in ROWS}


def test_disk_full_while_saving_then_resume_continues(tmp_path, monkeypatch):
    """A full disk at the checkpoints of steps 6 and 8: step 4's stays; --resume finishes."""
    import errno

    import torch

    from quillgpt import load_checkpoint
    from quillgpt.training.run_dir import load_train_state
    from train_utils import assert_same

    corpus = write_corpus(tmp_path / "corpus")
    args = [*TRAIN_OK, "--data", str(corpus), "--data_dir", str(tmp_path / "data"),
            "--max_steps", "8", "--ckpt_interval", "2", "--eval_interval", "100"]  # fmt: skip
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert quiet_main([*args, "--out_dir", str(whole)])[0] == 0
    real_save = torch.save

    def disk_fills_up(payload, path, *rest, **kwargs):
        if payload["loop"]["step"] <= 4:
            return real_save(payload, path, *rest, **kwargs)
        buffer = io.BytesIO()
        real_save(payload, buffer)
        Path(path).write_bytes(buffer.getvalue()[: buffer.tell() // 2])  # half of it fits
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", disk_fills_up)
        code, err = quiet_main([*args, "--out_dir", str(run)])
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert any("warning: checkpoint at step 6 failed" in line for line in lines)  # goes on
    assert lines[-1].startswith("quill train: error: could not write ")
    assert "No space left on device" in lines[-1] and "continue with --resume" in lines[-1]
    saved = load_train_state(run)  # step 4's checkpoint, whole
    assert saved["loop"]["step"] == 4
    assert_same(load_checkpoint(run).state_dict(), saved["model"])
    assert not list(run.rglob("*.tmp"))  # the half-written files are gone

    assert quiet_main([*args, "--out_dir", str(run), "--resume"])[0] == 0
    assert load_train_state(run)["loop"]["step"] == 8
    assert_same(load_checkpoint(run).state_dict(), load_checkpoint(whole).state_dict())


def quiet_main(argv: list[str]) -> tuple[int | str | None, str]:
    """``quill`` in-process; (exit status, stderr), stdout dropped."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code: int | str | None = cli_main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return code, err.getvalue()


def docs_row(row: Row) -> str:
    """The row of docs/errors.md's table (``|`` escaped: the messages hold ``<|endoftext|>``)."""
    says = row.says.replace("|", "\\|")
    return f"| {row.verb} | {row.input} | `{says}` |"


# ---- the workspace


def build_workspace(root: Path) -> None:
    """Everything the rows point at, under ``root`` (the rows run with ``root`` as cwd).

    The runs are trained with ``quill train``, so their ``config.json`` names the data they
    were trained on (``--resume`` and ``quill eval`` read it back).
    """
    for seed, name in ((0, "run"), (1, "other-run")):  # another alphabet: another tokenizer
        write_corpus(root / f"corpus{seed}", seed)
        paths = ["--data", str(root / f"corpus{seed}"), "--data_dir", str(root / "data")]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli_main([*TRAIN_OK, *paths, "--out_dir", str(root / name)])
        assert code == 0, name
    _write_inputs(root)
    _write_foreign(root)
    _write_broken_runs(root)


def _write_inputs(root: Path) -> None:
    texts = root / "texts"
    texts.mkdir()
    (texts / "empty.txt").write_bytes(b"")
    (texts / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (texts / "latin1.txt").write_bytes("café crème, naïve façade\n".encode("latin-1"))
    (texts / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (texts / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (texts / "good.jsonl").write_text('{"text": "the cat sat"}\n{"text": "on the mat"}\n')
    (root / "a-file").write_text("just a file\n")
    cfg = root / "cfg"
    cfg.mkdir()
    files = {
        "run.txt": "[model]\nn_layer = 1\n",
        "broken.toml": "[model\nn_layer = 1\n",
        "unknown-section.toml": "[model]\nn_layer = 1\n[optimiser]\nlr = 1\n",
        "unknown-model-key.toml": "[model]\nn_layers = 1\n",
        "unknown-train-key.toml": "[train]\nlearning_rate = 1e-3\n",
        "model-5.toml": "model = 5\n",
        "dropout-string.toml": '[model]\ndropout = "0.1"\n',
        "bias-string.toml": '[model]\nbias = "false"\n',
        "unknown-preset.toml": '[model]\npreset = "huge"\n',
        "big-dropout.yaml": "model:\n  dropout: 1.5\n",
        "negative-batch.json": '{"train": {"batch_size": -4}}',
        "list.json": "[1, 2, 3]",
    }
    for name, text in files.items():
        (cfg / name).write_text(text)
    (cfg / "binary.toml").write_bytes(bytes(range(256)))
    (cfg / "latin1.toml").write_bytes('[train]\nout_dir = "café"\n'.encode("latin-1"))


def _write_foreign(root: Path) -> None:
    """Folders and files of other programs."""
    from tokenizers import Tokenizer, models

    random_files = root / "random"
    random_files.mkdir()
    (random_files / "photo.jpg").write_bytes(random.Random(1).randbytes(64))
    (random_files / "notes.bin").write_bytes(random.Random(2).randbytes(64))
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"name": "webapp", "port": 8080}))
    (foreign / "index.html").write_text("<html></html>\n")
    hf = root / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257}))
    (root / "bad-json").mkdir()
    (root / "bad-json" / "config.json").write_text("{model: gpt}")
    (root / "config-list").mkdir()
    (root / "config-list" / "config.json").write_text("[1, 2]")
    (root / "model-5").mkdir()
    (root / "model-5" / "config.json").write_text('{"model": 5}')
    tok = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.save(str(root / "foreign-tokenizer.json"))


def _write_broken_runs(root: Path) -> None:
    """Copies of the trained run, each broken in one way."""
    from quillgpt.cli import main

    run = root / "run"
    state = (run / "train_state.pt").read_bytes()
    weights = (run / "model.safetensors").read_bytes()
    broken = {
        "run-corrupt-state": ("train_state.pt", random.Random(0).randbytes(len(state))),
        "run-truncated-state": ("train_state.pt", state[: len(state) // 2]),
        "run-empty-state": ("train_state.pt", b""),
        "run-truncated-weights": ("model.safetensors", weights[: len(weights) // 2]),
        "run-other-tokenizer": ("tokenizer.json", (root / "other-run/tokenizer.json").read_bytes()),
    }
    for name, (file, content) in broken.items():
        shutil.copytree(run, root / name)
        (root / name / file).write_bytes(content)
    shutil.copytree(run, root / "run-no-tokenizer")
    (root / "run-no-tokenizer" / "tokenizer.json").unlink()
    (root / "run-best-only").mkdir()
    shutil.copytree(run / "best", root / "run-best-only" / "best")
    shutil.copytree(run, root / "run-data-gone")
    document = json.loads((run / "config.json").read_text())
    document["data"]["prepared"] = str(root / "data" / "prepared" / "gone")
    (root / "run-data-gone" / "config.json").write_text(json.dumps(document))
    (root / "checkpoint-only").mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        shutil.copy(run / name, root / "checkpoint-only" / name)
    (root / "checkpoint-only" / "config.json").write_text(json.dumps({"model": document["model"]}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["quantize", str(run), str(root / "run-int8")]) == 0


# ---- what changed


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every path under ``root``: its kind, modification time and (for files) content hash."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            found[rel] = ("dir", 0, "")
        else:
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[rel] = ("file", stat.st_mtime_ns, digest)
    return found


def describe_changes(before: dict, after: dict) -> list[str]:
    """What differs between two snapshots, as readable lines."""
    changes = [f"new: {p}" for p in sorted(after.keys() - before.keys())]
    changes += [f"gone: {p}" for p in sorted(before.keys() - after.keys())]
    changes += [
        f"changed: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]
    ]
    return changes


@contextlib.contextmanager
def without_package(name: str | None) -> Iterator[None]:
    """Make ``import name`` fail inside the block, as if the package were not installed."""
    if name is None:
        yield
        return
    saved = sys.modules.get(name)
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules[name]
        else:
            sys.modules[name] = saved


def run_row(row: Row) -> tuple[int | str | None, str]:
    """Run ``row`` in-process in the current directory; return (exit status, stderr)."""
    with without_package(row.without):
        return quiet_main(list(row.argv))


def restore(root: Path) -> None:
    """Put the workspace back as it was built (from its pristine copy)."""
    shutil.rmtree(root)
    shutil.copytree(root.with_name("pristine"), root, symlinks=True)
