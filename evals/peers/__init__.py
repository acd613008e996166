"""Peer comparisons: other feature stores measured on the same machine, the same way.

Each peer runs in its own virtualenv (its pins must not touch ``/work/main/.venv``):

    python evals/peers/feast_setup.py          # creates .venv-feast with feast[redis,duckdb]==0.67.0
    python evals/peers/bench_feast.py --quick  # re-executes itself with .venv-feast's python
"""

__all__: list[str] = []
