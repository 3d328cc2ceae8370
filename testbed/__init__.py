"""testbed: a JAX testbed for deriving scaling laws from small transformers.

This package is the training core: config.py (the schema), data/, model.py, parametrization.py (the one table),
schedules.py and optim.py (the one place the LR is computed), train.py and pack.py (one run, or K vmapped) over
loop.py (the one loop), checkpoints.py, runstore.py and sweepdir.py (the run store). It imports nothing from
testbed.launch or testbed.analysis.
"""

__version__ = "0.1.0"
