"""notebooks/quickstart.ipynb: committed without outputs, and runs top to bottom at small settings.

The notebook's first code cell holds every setting and is tagged ``parameters``. The test inserts
a cell right after it (as papermill does) that shrinks the run to a few training steps of a tiny
model on one thread, then executes the notebook with nbclient in a fresh ``python3`` kernel
(ipykernel's, from the dev dependencies), from the ``notebooks/`` folder as Jupyter would, with
the run directory in a temporary folder. The built-in corpus comes from the same cache as the
other tests (the repository's ``data/`` or ``$QUILLGPT_DATA_DIR``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
DATA_DIR = Path(os.environ.get("QUILLGPT_DATA_DIR") or ROOT / "data")


def _code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _is_parameters(cell: dict) -> bool:
    return "parameters" in cell.get("metadata", {}).get("tags", [])


def test_committed_notebook_has_no_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    for cell in _code_cells(notebook):
        source = "".join(cell["source"])[:60]
        assert cell["outputs"] == [], f"cell with outputs: {source!r} (strip them)"
        assert cell["execution_count"] is None, f"cell with an execution count: {source!r}"


def test_settings_are_one_parameters_cell_at_the_top() -> None:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cells = _code_cells(notebook)
    assert [_is_parameters(cell) for cell in cells].count(True) == 1
    assert _is_parameters(cells[0])
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.slow
def test_notebook_runs_at_small_settings(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    small = {
        "TRAIN_SECONDS": None,
        "MAX_STEPS": 6,
        "TOKENIZER": "char",
        "MODEL": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "BATCH_SIZE": 4,
        "LOG_INTERVAL": 2,
        "EVAL_INTERVAL": 3,
        "EVAL_BATCHES": 2,
        "GENERATE_TOKENS": 16,
        "TIMING_REPEATS": 1,
        "THREADS": 1,  # two threads on a busy two-core machine can be 30x slower than one
        "DATA_DIR": str(DATA_DIR),
        "OUT_DIR": str(tmp_path / "run"),
    }
    source = "\n".join(f"{name} = {value!r}" for name, value in small.items())
    index = next(i for i, cell in enumerate(notebook.cells) if _is_parameters(cell))
    injected = nbformat.v4.new_code_cell(source, id="injected-parameters")
    notebook.cells.insert(index + 1, injected)

    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails

    outputs = [output for cell in _code_cells(notebook) for output in cell["outputs"]]
    streams = [output for output in outputs if output["output_type"] == "stream"]
    text = "".join(output["text"] for output in streams)
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    # attention before training, the loss curve, attention after training
    assert len(images) == 3, f"expected 3 figures, got {len(images)}"
    assert "step by step == reference == fused kernel == MultiHeadSelfAttention" in text
    assert "stopped by max_steps after 6 steps" in text
    assert "int8/fp32" in text and "same logits" in text
    run = tmp_path / "run"
    assert (run / "metrics.jsonl").is_file() and (run / "model.safetensors").is_file()
    assert (tmp_path / "int8" / "model.safetensors").is_file()
