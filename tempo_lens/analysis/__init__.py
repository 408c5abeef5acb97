"""Metrics, statistics, experiments and ablations built on the public tempo_lens API."""
