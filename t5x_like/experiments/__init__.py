"""Experiments, the top library floor: comparison grids, their reports and statistics.

Imports training/, inference/, model/ and data/; imported only by cli/.
Modules:
  grid    Experiment, arms (explicit or expanded from a declared grid), matching
          claims, running the arm x seed cells
  report  report.md, results.json / .csv, loss curves
  stats   bootstrap intervals, paired differences, scaling-law fits
"""
