"""Hyper-parameter search with Optuna: a Hydra sweeper (`hparams_search=...`) and the reporting its jobs do.

Optuna samples, prunes and stores the study (SQLite in the sweep folder); Hydra's configured launcher runs
the jobs. seg/search/sweeper.py is the sweeper, seg/search/space.py reads its search space in Hydra's
override grammar, seg/search/report.py is what a job's validation calls to report to its trial.
"""
