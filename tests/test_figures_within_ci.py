"""benchmarks/figures_within_ci.py (loaded by path): which figures it compares."""

from __future__ import annotations

from tests.scripts import load_script

script = load_script("benchmarks/figures_within_ci.py")


def test_every_interval_figure_is_compared_and_outsiders_found() -> None:
    old = {
        "configs": {
            "a": {
                "kl": {"n": 9, "mean": 1.0, "ci95": [0.8, 1.2]},
                "share": {"share": 0.5, "ci95": [0.3, 0.7]},
                "test": {"mean_diff": 0.1, "ci95_diff": [0.0, 0.2]},
                "log": {"geometric_mean": 0.9, "ci": [0.85, 0.95]},
                "plain": 3.0,
                "gone": {"mean": 1.0, "ci95": [0.0, 2.0]},
            }
        },
        "pairs": [{"mean": 1.0, "ci95": [0.9, 1.1]}],
    }
    new = {
        "configs": {
            "a": {
                "kl": {"n": 9, "mean": 1.1, "ci95": [1.0, 1.2]},
                "share": {"share": 0.9, "ci95": [0.8, 1.0]},
                "test": {"mean_diff": 0.2, "ci95_diff": [0.1, 0.3]},
                "log": {"geometric_mean": 0.9, "ci": [0.85, 0.95]},
                "plain": 4.0,
            }
        },
        "pairs": [{"mean": 2.0, "ci95": [1.9, 2.1]}],
    }
    rows = {path: (value, interval) for path, value, interval, _ in script.estimates(old, new)}
    assert set(rows) == {
        "/configs/a/kl",
        "/configs/a/share",
        "/configs/a/test",
        "/configs/a/log",
        "/pairs[0]",
    }
    outside = {p for p, (v, ci) in rows.items() if not ci[0] <= v <= ci[1]}
    assert outside == {"/configs/a/share", "/pairs[0]"}
