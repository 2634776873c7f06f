"""``quill train``: train a model from a config file plus command-line overrides.

Examples::

    quill train --config configs/shakespeare-bpe-cpu.toml                 # the CPU demo
    quill train --config configs/shakespeare-bpe-cpu.toml --max_time 1m --lr 3e-3
    quill train --resume --out_dir runs/shakespeare-bpe-cpu               # continue a run
    quill train --config configs/shakespeare-bpe-cpu.toml --data my_texts/ --out_dir runs/mine
    quill train --init_from hf/gpt2 --data my_texts/ --block_size 256     # fine-tune GPT-2
    torchrun --nproc_per_node 4 -m quillgpt.cli train --config configs/gpt2-124m.toml

Every field of ``ModelConfig`` and ``TrainConfig`` is an option (``--n_layer`` or ``--n-layer``);
options override the config file, which overrides the defaults. The data options (``--data``,
``--text_column``, ``--tokenizer_vocab``, ...) are ``quill prepare``'s, under the same names.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HELP = "train a model (config file + overrides; checkpoints, exact --resume, torchrun)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--resume`` and one option per ModelConfig/TrainConfig field."""
    from quillgpt.commands.options import add_config_options
    from quillgpt.config import ModelConfig
    from quillgpt.training.config import TrainConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1].split("Every field", 1)[0].rstrip()
    parser.add_argument(
        "--config",
        help="TOML, YAML or JSON file with [model] and [train] sections (presets in configs/)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out_dir exactly where its last checkpoint left off "
        "(without --config, the run's own config.json is used)",
    )
    parser.add_argument(
        "--print_config",
        "--print-config",
        action="store_true",
        help="print the merged configuration as JSON and exit",
    )
    model_title = "model (ModelConfig; vocab_size always follows the tokenizer)"
    add_config_options(parser.add_argument_group(model_title), ModelConfig, skip=("vocab_size",))
    add_config_options(parser.add_argument_group("training (TrainConfig)"), TrainConfig)


def merged_sections(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """Split the settings by kind: typed values and text values.

    Returns the typed ``[model]`` and ``[train]`` values of the config file (or of the run's
    config.json on --resume), the text values of the options, and where the typed ones came from.
    """
    from quillgpt.checkpoint import CONFIG_FILE, read_config
    from quillgpt.config import ModelConfig
    from quillgpt.training.config import TRAIN_FIELDS, TrainConfig, load_config_file

    given = vars(args)
    model_text = {f.name: given[f.name] for f in dataclasses.fields(ModelConfig) if f.name in given}
    train_text = {name: given[name] for name in TRAIN_FIELDS if name in given}
    model, train, source = {}, {}, ""
    if args.config:
        sections = load_config_file(args.config)
        model, train, source = sections["model"], sections["train"], str(args.config)
    elif args.resume:
        run_dir = Path(train_text.get("out_dir", TrainConfig.out_dir))
        if (run_dir / CONFIG_FILE).is_file():
            saved = read_config(run_dir)
            model, train = saved.get("model", {}), saved.get("train", {})
            source = str(run_dir / CONFIG_FILE)
    return model, train, model_text, train_text, source


def run(args: argparse.Namespace) -> int:
    """Prepare the data (cached), train, print where everything is; return the exit status."""
    import sys

    from quillgpt.commands.options import refuse_unused_vocab
    from quillgpt.device import resolve_device
    from quillgpt.training import train
    from quillgpt.training.config import build_configs
    from quillgpt.training.parallel import Parallel
    from quillgpt.training.run_dir import run_lock

    model, train_values, model_text, train_text, source = merged_sections(args)
    if not args.config and not args.resume and not model_text and "init_from" not in train_text:
        print(
            "note: no --config; using the ModelConfig defaults (the GPT-2 124M shape). "
            "See configs/ for CPU presets.",
            file=sys.stderr,
        )
    model_cfg, train_cfg = build_configs(
        model, train_values, source=source, model_text=model_text, train_text=train_text
    )
    refuse_unused_vocab(train_cfg.tokenizer, train_text)
    if args.print_config:
        document = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
        document["model"].pop("vocab_size")
        print(json.dumps(document, indent=2))
        return 0
    given_model = None
    if train_cfg.init_from:
        explicit = {**model, **model_text}.keys()
        tokenizer_given = "tokenizer" in {**train_values, **train_text}
        given_model, train_cfg = start_from_hf(model_cfg, train_cfg, explicit, tokenizer_given)
        model_cfg = given_model.config
    check_before_writing(train_cfg, resume=args.resume)
    par = Parallel.start(resolve_device(train_cfg.device), train_cfg.parallel)

    try:
        if par.is_main:  # rank 0 builds the cache, the others then read it
            data = train_cfg.prepare_data()
        par.barrier()
        if not par.is_main:
            data = train_cfg.prepare_data()
        check_data_fits(data, model_cfg.block_size, train_cfg.batch_size, par.world_size)
        # rank 0 holds the run directory's lock: a second `quill train` there is refused
        lock = run_lock(train_cfg.out_dir) if par.is_main else contextlib.nullcontext()
        with lock:
            result = train(model_cfg, train_cfg, data, model=given_model, resume=args.resume)
        if par.is_main:
            _summarize(result)
    finally:
        par.shutdown()
    if result.interrupted:
        return 130 if result.stopped == "SIGINT" else 143
    return 0


ADJUSTABLE_WHEN_IMPORTED = ("dropout", "attention", "block_size")
"""Model options that ``--init_from`` leaves to the user: they do not change the weights."""


def start_from_hf(
    model_cfg: Any, train_cfg: Any, explicit: Iterable[str], tokenizer_given: bool
) -> tuple[Any, Any]:
    """The model of ``train_cfg.init_from``, and ``train_cfg`` with its tokenizer.

    Every process imports the same weights. On ``--resume`` they are imported again and then
    replaced by the checkpoint's, so a run killed before its first checkpoint starts over from
    the imported model, not from a random one.

    Raises:
        QuillError: the source cannot be loaded or has no ``tokenizer.json``, a model option
            other than :data:`ADJUSTABLE_WHEN_IMPORTED` differs from the model's, a longer
            ``block_size`` than its learned positions, or another ``--tokenizer``.
    """
    from quillgpt.errors import QuillError
    from quillgpt.interop.hf import from_hf, hf_snapshot, load_hf_tokenizer
    from quillgpt.model import DecoderLM

    source = hf_snapshot(train_cfg.init_from)
    tokenizer = source / "tokenizer.json"
    load_hf_tokenizer(source)  # a clear error now if it is missing or broken
    if tokenizer_given and Path(train_cfg.tokenizer) != tokenizer:
        raise QuillError(
            f"--init_from uses the tokenizer of {source}; drop --tokenizer {train_cfg.tokenizer}"
        )
    imported = from_hf(source)
    shape = imported.config
    clashes = [
        f"--{name} {getattr(model_cfg, name)} (the model has {getattr(shape, name)})"
        for name in sorted(explicit)
        if name not in ADJUSTABLE_WHEN_IMPORTED and getattr(model_cfg, name) != getattr(shape, name)
    ]
    if clashes:
        raise QuillError(
            f"--init_from takes the model's shape from {train_cfg.init_from}; drop "
            f"{', '.join(clashes)} (only {', '.join(ADJUSTABLE_WHEN_IMPORTED)} may be set)"
        )
    block_size = model_cfg.block_size if "block_size" in explicit else shape.block_size
    if block_size > shape.block_size and shape.pos_encoding == "learned":
        raise QuillError(
            f"--block_size {block_size} is longer than the {shape.block_size} positions "
            f"{train_cfg.init_from} has learned; use --block_size {shape.block_size} or less"
        )
    config = dataclasses.replace(
        shape, block_size=block_size, dropout=model_cfg.dropout, attention=model_cfg.attention
    )
    model = DecoderLM(config)
    state = imported.state_dict()
    if shape.pos_encoding == "learned":  # a shorter context keeps the first positions
        state["pos_emb.embed.weight"] = state["pos_emb.embed.weight"][:block_size]
    model.load_state_dict(state)
    return model, dataclasses.replace(train_cfg, tokenizer=str(tokenizer))


def check_before_writing(cfg: Any, *, resume: bool) -> None:
    """Refuse what is bound to fail before data is prepared or the run directory touched.

    ``train()`` refuses the same things itself, but only after the data is prepared (minutes,
    for a new corpus) and the run directory's lock is taken.

    Raises:
        QuillError: no budget, no tensorboard package, an ``--out_dir`` that cannot take the
            run, or ``--resume`` with other data or tokenizer options than the run's.
    """
    from quillgpt.training.config import require_budget
    from quillgpt.training.metrics import require_tensorboard
    from quillgpt.training.run_dir import check_out_dir, check_resume_data

    check_out_dir(cfg.out_dir, resume=resume)  # first: a foreign folder explains the rest
    require_budget(cfg)
    if cfg.tensorboard:
        require_tensorboard()
    if resume:
        check_resume_data(cfg.out_dir, cfg)


def check_data_fits(data: Any, block_size: int, batch_size: int, world_size: int) -> None:
    """Refuse data too short for one training step or one validation window, up front.

    Raises:
        DataError: naming the split, its length and what to make smaller.
    """
    from quillgpt.data import make_eval_loader, make_train_loader

    make_train_loader(data, block_size, batch_size, rank=0, world_size=world_size)
    make_eval_loader(data, block_size, batch_size=1, rank=0, world_size=1)


def _summarize(result: Any) -> None:
    """Print the outcome, a sample, and where the files are."""
    if result.interrupted:
        return
    state = result.state
    lines = [
        f"trained {state.step} steps, {state.tokens:,} tokens in {state.elapsed:.0f} s "
        f"(stopped: {result.stopped})"
    ]
    if result.final_eval is not None:
        final = result.final_eval
        lines.append(
            f"validation (whole split): {final.bpb:.4f} bits/byte, loss {final.loss:.4f}, "
            f"perplexity {final.perplexity:.2f}"
        )
    samples = result.run_dir / "samples.txt"
    if samples.is_file():
        last = samples.read_text(encoding="utf-8").rsplit("=== step", 1)[-1]
        body = last.split("--- sample 1 ---\n", 1)[-1].split("--- sample 2 ---", 1)[0]
        lines.append("sample:\n" + body.strip())
    lines.append(
        f"run directory: {result.run_dir}  (model.safetensors, best/, metrics.jsonl, "
        f"samples.txt; curves in {result.run_dir / 'loss.png'})"
    )
    print("\n".join(lines))
