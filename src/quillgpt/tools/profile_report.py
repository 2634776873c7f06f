"""The result of ``quill profile``: :class:`ProfileReport`, and its Markdown form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ProfileReport:
    """What :func:`profile_model` measured.

    Attributes:
        setup: model shape, device, precision and the sizes of each phase.
        speed: ``train_step_ms``, ``train_tokens_per_s``, ``prefill_ms``,
            ``prefill_tokens_per_s``, ``decode_ms_per_token``, ``decode_tokens_per_s``
            (medians of ``repeats`` unprofiled runs).
        memory: ``parameter_bytes``, ``kv_cache_bytes`` (full context, this batch size),
            ``peak_rss_bytes``, and on an accelerator ``peak_allocated_<phase>_bytes``.
        top_ops: per phase, the operators with the most self time: ``name``, ``calls``,
            ``self_ms`` (device self time on an accelerator, CPU self time otherwise) and
            ``percent`` of the phase's total.
        trace: path of the Chrome trace, if one was written.
    """

    setup: dict[str, Any]
    speed: dict[str, float]
    memory: dict[str, int]
    top_ops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    trace: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data."""
        return asdict(self)


def to_markdown(report: ProfileReport) -> str:
    """Render ``report`` as Markdown: setup, speed, memory, and one operator table per phase."""
    s = report.setup
    model = s["model"]
    lines = [
        f"**Model** {model['n_layer']} layers x {model['n_embd']} wide, {model['n_head']} heads, "
        f"context {model['block_size']}, vocab {model['vocab_size']}: "
        f"{model['parameters']:,} parameters. **Device** {s['device']} ({s['threads']} threads). "
        f"Batch {s['batch_size']}; "
        + (f"train sequence {s['seq_len']} ({s['train_precision']}); " if s["seq_len"] else "")
        + f"prompt {s['prompt_len']}; {s['decode_tokens']} decode steps; prefill and decode "
        f"with {s['inference_layers']} layers.",
        "",
        "| phase | time | tokens/s |",
        "|---|---|---|",
    ]
    sp = report.speed
    if "train_step_ms" in sp:
        lines.append(
            f"| train step | {sp['train_step_ms']:.1f} ms | {sp['train_tokens_per_s']:,.0f} |"
        )
    lines.append(f"| prefill | {sp['prefill_ms']:.1f} ms | {sp['prefill_tokens_per_s']:,.0f} |")
    lines.append(
        f"| decode | {sp['decode_ms_per_token']:.2f} ms/step | {sp['decode_tokens_per_s']:,.1f} |"
    )
    lines += ["", "| memory | MiB |", "|---|---|"]
    for key, value in report.memory.items():
        label = key.removesuffix("_bytes").replace("_", " ")
        lines.append(f"| {label} | {value / 2**20:,.1f} |")
    for phase, ops in report.top_ops.items():
        lines += [
            "",
            f"Top operators by self time, {phase.replace('_', ' ')}:",
            "",
            "| operator | calls | self ms | % |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{op['name']}` | {op['calls']} | {op['self_ms']:.2f} | {op['percent']:.1f} |"
            for op in ops
        ]
    if report.trace:
        lines += ["", f"Chrome trace: `{report.trace}`"]
    return "\n".join(lines) + "\n"
