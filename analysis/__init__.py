"""Scaling-law analysis (testbed.analysis): run directories and tables -> DataFrame -> fits -> figures -> report.

load.py reads sweeps (through testbed.runstore) and CSV/parquet tables into one DataFrame; registry.py lists every
law `testbed fit` knows, with its fit (pointfit.py, tablefits.py over fit.py and laws.py), columns, figure and
text; report.py, compare.py, transfer.py, design.py and simulate.py answer the questions; plots.py, figures.py,
fitplots.py, plotkinds.py and html.py draw them. Never imports launch/ or the training loop.
"""
