"""See a run: circuitsvis attention and token views, the parallel-set graph, and a
self-contained HTML report (`tempo-lens report`)."""

from tempo_lens.viz.attention import attention_view, full_patterns, token_labels, tokens_view
from tempo_lens.viz.graph import SetGraph, set_graph
from tempo_lens.viz.report import build_report, write_report

__all__ = [
    "SetGraph",
    "attention_view",
    "build_report",
    "full_patterns",
    "set_graph",
    "token_labels",
    "tokens_view",
    "write_report",
]
