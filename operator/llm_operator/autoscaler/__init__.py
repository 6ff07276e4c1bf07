"""The built-in autoscaler: a pure `decide()` (decide.py), Prometheus queries (metrics.py).

The autoscaler loop (the operator's timer) reads an `Observation` with `metrics.observe`,
calls `decide.decide` with the state it persisted in an annotation, and applies the
decision. Only decide.py is pure; metrics.py does network I/O.
"""
