"""Experiments, the top library floor: comparison grids, their reports and statistics.

Imports training/, inference/, model/ and data/; imported only by cli/.
Modules:
  spec      Experiment and Arm (explicit arms, or a declared grid that expands to arms)
  claims    matching claims: each arm's size and cost relative to the reference arm
  cells     a cell (arm x seed) and its TrainConfig, made from its arm's; stale cells
  scoring   the shared metric and downstream tasks of a finished cell
  prompted_eval  the grid's prompted evaluation phase (task-suite families) and its report tables
  zero_shot_phases  prompted evaluation by phase (pretrained, finetuned): a table per phase, the ranking before and after
  grid      running the cells (several at a time: threaded) and their records
  threaded  cells trained in threads, with labelled output and signal handling
  report    report.md, results.json / .csv, loss curves
  stats     bootstrap intervals, paired differences, scaling-law fits
"""
