"""Selection (phase 2 of HANT): an integer program picks one (span, op, precision) per slot under
latency budgets. Works on tables only: imports neither torch nor onnx.

    ilp.py     Option / Problem / Solution, dominance pruning, solve (PuLP: CBC or HiGHS)
    budget.py  "0.7x" / "2ms" / "speedup=1.5" / "int8x=1.2" budgets, "0.5x" / "3.5M" params and MACs limits
    tables.py  scores.csv + latency.csv + latency_fixed.json → options and a Problem
    sweep.py   Pareto sweep over budgets, pareto.png
    stage.py   run_search (solution.json), format_table
"""
