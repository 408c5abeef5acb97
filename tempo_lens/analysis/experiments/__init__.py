"""Experiments: a YAML config in, one output directory out (`tempo-lens experiment`).

- `kind`: what an experiment kind is (`Kind`, `KindKeys`); `registry`: the `KINDS` tuple.
- `config`: the common keys (`CommonKeys`), `load_config` / `resolve`.
- `runs`: the grid of runs, generated once and saved (`ensure_runs`, `generate_unit`).
- `runner`: `run_experiment`, summary.json and report.md; `engines`: in-process or Ray.
- `seed_kinds`, `sweep`: the seed-study kinds; `markdown`, `plots`: report helpers;
  `frames`: per-run metrics as a table (`runs.parquet`, `to_pandas`).
"""
