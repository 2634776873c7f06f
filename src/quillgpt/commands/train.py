"""``quill train``: train a model from a config file plus command-line overrides.

Examples::

    quill train --config configs/shakespeare-bpe-cpu.toml                 # the CPU demo
    quill train --config configs/shakespeare-bpe-cpu.toml --max_time 1m --lr 3e-3
    quill train --resume --out_dir runs/shakespeare-bpe-cpu               # continue a run
    torchrun --nproc_per_node 4 -m quillgpt.cli train --config configs/gpt2-124m.toml

Every field of ``ModelConfig`` and ``TrainConfig`` is an option (``--n_layer`` or ``--n-layer``);
options override the config file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

HELP = "train a model (config file + overrides; checkpoints, exact --resume, torchrun)"

_EXCLUDED_MODEL_FIELDS = ("vocab_size",)  # always taken from the tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--resume`` and one option per ModelConfig/TrainConfig field."""
    from quillgpt.config import ModelConfig
    from quillgpt.training.config import TrainConfig, field_docs

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
    for title, cls, skip in (
        (
            "model (ModelConfig; vocab_size always follows the tokenizer)",
            ModelConfig,
            _EXCLUDED_MODEL_FIELDS,
        ),
        ("training (TrainConfig)", TrainConfig, ()),
    ):
        group = parser.add_argument_group(title)
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.name in skip:
                continue
            _add_field_option(group, field, hints[field.name], docs.get(field.name, ""))


def _add_field_option(
    group: argparse._ArgumentGroup, field: dataclasses.Field, hint: Any, doc: str
) -> None:
    """Add ``--name`` (and ``--dashed-name``) for one dataclass field, typed from its hint."""
    names = [f"--{field.name}"]
    if "_" in field.name:
        names.append(f"--{field.name.replace('_', '-')}")
    default = field.default
    shown = "none" if default is None else default
    if field.name == "max_time":
        shown = "none"
    kwargs: dict[str, Any] = {
        "dest": field.name,
        "default": argparse.SUPPRESS,
        "help": f"{doc.replace('``', '')} (default: {shown})".replace("%", "%%"),
    }
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else ()
    base_type = next((a for a in args if a is not type(None)), hint)
    if typing.get_origin(base_type) is Literal:
        kwargs["choices"] = list(typing.get_args(base_type))
        kwargs["metavar"] = "{" + ",".join(map(str, kwargs["choices"])) + "}"
    elif base_type is bool:
        kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
    elif field.name == "max_time":
        kwargs.update(type=str, metavar="DURATION")
    elif base_type in (int, float):
        kwargs.update(type=_optional(base_type) if type(None) in args else base_type)
        kwargs["metavar"] = base_type.__name__.upper()
    else:
        kwargs.update(type=_optional(str) if type(None) in args else str, metavar="TEXT")
    group.add_argument(*names, **kwargs)


def _parse_bool(text: str) -> bool:
    """Parse ``true/false/yes/no/on/off/1/0``."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(kind: type) -> Any:
    """An argparse type that also accepts ``none``."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def merged_sections(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge defaults < config file (or the run's config.json on --resume) < options."""
    from quillgpt.checkpoint import read_config
    from quillgpt.config import ModelConfig
    from quillgpt.training.config import TRAIN_FIELDS, TrainConfig, load_config_file

    given = vars(args)
    model_over = {f.name: given[f.name] for f in dataclasses.fields(ModelConfig) if f.name in given}
    train_over = {name: given[name] for name in TRAIN_FIELDS if name in given}
    if args.config:
        sections = load_config_file(args.config)
    elif args.resume:
        run_dir = Path(train_over.get("out_dir", TrainConfig.out_dir))
        if (run_dir / "config.json").is_file():
            saved = read_config(run_dir)
            sections = {"model": saved.get("model", {}), "train": saved.get("train", {})}
        else:
            sections = {"model": {}, "train": {}}
    else:
        sections = {"model": {}, "train": {}}
    return {**sections["model"], **model_over}, {**sections["train"], **train_over}


def run(args: argparse.Namespace) -> int:
    """Prepare the data (cached), train, print where everything is; return the exit status."""
    import sys

    from quillgpt.data import prepare_data
    from quillgpt.optimize.devices import resolve_device
    from quillgpt.training import Trainer
    from quillgpt.training import distributed as dist_utils
    from quillgpt.training.config import build_configs

    model_dict, train_dict = merged_sections(args)
    if not args.config and not args.resume and not model_dict:
        print(
            "note: no --config; using the ModelConfig defaults (the GPT-2 124M shape). "
            "See configs/ for CPU presets.",
            file=sys.stderr,
        )
    model_cfg, train_cfg = build_configs(model_dict, train_dict)
    if args.print_config:
        document = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
        document["model"].pop("vocab_size")
        print(json.dumps(document, indent=2))
        return 0
    info, _ = dist_utils.init_distributed(resolve_device(train_cfg.device))

    def prepare() -> Any:
        vocab = train_cfg.tokenizer_vocab if train_cfg.tokenizer == "bpe" else None
        return prepare_data(train_cfg.data, train_cfg.tokenizer, vocab, data_dir=train_cfg.data_dir)

    try:
        if info.is_main:  # rank 0 builds the cache, the others then read it
            data = prepare()
        dist_utils.barrier()
        if not info.is_main:
            data = prepare()
        trainer = Trainer(model_cfg, train_cfg, data, resume=args.resume)
        if info.is_main:
            _describe(trainer)
        result = trainer.fit()
        if info.is_main:
            _summarize(trainer, result)
    finally:
        dist_utils.shutdown_distributed()
    if result.interrupted:
        return 130 if result.stopped == "SIGINT" else 143
    return 0


def _describe(trainer: Any) -> None:
    """Print what is about to run."""
    import sys

    cfg, mcfg = trainer.cfg, trainer.model_config
    params = trainer.model.num_parameters(exclude_embeddings=True)
    budget = []
    if cfg.max_steps:
        budget.append(f"{cfg.max_steps} steps")
    if cfg.max_time:
        budget.append(f"{cfg.max_time:.0f} s")
    print(
        f"quill train: {params / 1e6:.2f}M non-embedding parameters "
        f"(L{mcfg.n_layer} C{mcfg.n_embd} H{mcfg.n_head} T{mcfg.block_size} V{mcfg.vocab_size}), "
        f"{trainer.tokens_per_step:,} tokens/step, {trainer.device.type} x "
        f"{trainer.dist.world_size}, {trainer.precision.name}, "
        f"compile {'on' if trainer.forward is not trainer.wrapped else 'off'}, "
        f"budget {' or '.join(budget)} -> {trainer.run_dir}",
        file=sys.stderr,
    )


def _summarize(trainer: Any, result: Any) -> None:
    """Print the outcome, a sample, and where the files are."""
    if result.interrupted:
        return
    lines = [
        f"trained {result.step} steps, {result.tokens:,} tokens in {result.elapsed:.0f} s "
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
