"""Per-run metrics of an experiment as a table: one row per saved run, written by the
runner as `runs.parquet` beside `summary.json` and read back with `to_pandas`.

```python
from tempo_lens.analysis.experiments.frames import to_pandas
df = to_pandas("runs/experiments/sweep")      # a pandas DataFrame, one row per run
df.groupby(["mode", "threshold"]).mean_set_size.mean()
```

The columns (`_schema`) are facts of each run (`run.json`, schema-checked by
`tempo_lens.run.RunFile`) beside the run's place in the grid (prompt id, category, mode,
threshold, next_from). `seconds` is a wall time: not reproducible across re-runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tempo_lens.analysis.experiments.runs import grid
from tempo_lens.errors import TempoError
from tempo_lens.run import RunFile
from tempo_lens.storage import read_json, write_file_atomic

FILE = "runs.parquet"


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("prompt_id", pa.string()),
            ("category", pa.string()),
            ("mode", pa.string()),
            ("threshold", pa.float64()),
            ("next_from", pa.string()),
            ("prompt", pa.string()),
            ("model_name", pa.string()),
            ("steps", pa.int64()),
            ("prompt_tokens", pa.int64()),
            ("physical_tokens", pa.int64()),
            ("max_set_size", pa.int64()),
            ("multi_member_steps", pa.int64()),
            ("mean_set_size", pa.float64()),
            ("stop_reason", pa.string()),
            ("seconds", pa.float64()),
            ("text", pa.string()),
            ("clean_text", pa.string()),
        ]
    )


def run_rows(section: dict[str, Any], directory: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per run of `section`'s grid (both modes) saved under `directory/runs/`,
    in grid order."""
    runs = Path(directory) / "runs"
    rows = []
    for spec in grid(section, ["isolated", "visible"]):
        path = runs / spec.run_id / "run.json"
        if not path.is_file():
            continue
        meta = read_json(path, RunFile)
        sizes = [len(s.tokens) for s in meta.steps]
        rows.append(
            {
                "run_id": spec.run_id,
                "prompt_id": spec.prompt_id,
                "category": spec.category,
                "mode": spec.mode,
                "threshold": spec.threshold,
                "next_from": spec.next_from,
                "prompt": spec.prompt,
                "model_name": meta.model_name,
                "steps": len(sizes),
                "prompt_tokens": sum(1 for s in meta.layout.step if s < 0),
                "physical_tokens": sum(1 for s in meta.layout.step if s >= 0),
                "max_set_size": max(sizes, default=0),
                "multi_member_steps": sum(1 for k in sizes if k > 1),
                "mean_set_size": sum(sizes) / len(sizes) if sizes else 0.0,
                "stop_reason": meta.stop_reason,
                "seconds": meta.seconds,
                "text": meta.text,
                "clean_text": meta.clean_text,
            }
        )
    return rows


def write_runs_table(section: dict[str, Any], directory: str | os.PathLike) -> Path | None:
    """`directory/runs.parquet` (atomically) from the runs saved there; None (nothing
    written) when the experiment saved no runs of its grid."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = run_rows(section, directory)
    if not rows:
        return None
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), sink)
    return write_file_atomic(Path(directory) / FILE, sink.getvalue().to_pybytes())


def to_pandas(directory: str | os.PathLike) -> Any:
    """The per-run metrics of the experiment in `directory` (its `runs.parquet`) as a
    pandas DataFrame, its columns and types checked on load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(directory) / FILE
    if not path.is_file():
        raise TempoError(
            f"{directory} has no {FILE}; run `tempo-lens experiment` into it (an experiment "
            "that saves runs writes one)"
        )
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise TempoError(f"{path} is damaged ({err}); re-run the experiment") from None
    if not table.schema.equals(_schema(), check_metadata=False):
        raise TempoError(
            f"{path} does not hold tempo_lens per-run metrics (columns "
            f"{table.schema.names}); re-run the experiment to rewrite it"
        )
    return table.to_pandas()
