"""Generators of the "new user" panels whose numbers docs/*.md quote (see README.md here).

Each module is a command-line script (``python benchmarks/panels/<name>.py --seed S --out DIR``)
built with numpy/pandas only, never ``equicare.sim``. They are not benchmarks: run_all.py only
discovers ``benchmarks/bench_*.py``, and pytest collects ``tests/`` only.
"""
