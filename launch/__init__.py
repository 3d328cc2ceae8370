"""The top floor (testbed.launch): the `testbed` command (cli/), sweeps and their designs, backends, planning.

sweep.py expands a sweep file (grammar.py, designs.py) into runs with stable ids; plan.py groups them into units
and backends.py hands the units to a local pool, SLURM or Ray, whose workers all call runner.py; status.py reads
where a sweep stands; nextruns.py proposes the next runs from a fit; quickstart.py is the main job end to end;
cluster.py starts one run over several hosts. Imports testbed/ and analysis/, never the other way.
"""
