"""``segrepro reproduce table=NAME scale=paper|mini|smoke seeds=N [rows=a,b] [dry_run=true]``: a paper
table's rows, one ``segrepro train`` (or ``segrepro eval``) per row and seed, and the table with the
paper's numbers beside ours.

- :mod:`.spec`: the table files of ``experiments/`` and the scales of ``experiments/scales/``;
- :mod:`.plan`: the runs a table needs, their folders and commands, and whether each has finished;
- :mod:`.runner`: runs them one subprocess at a time, skipping finished ones, resuming interrupted ones;
- :mod:`.submitit_launcher` (``launcher=submitit``): each run its own submitit job (SLURM, or processes
  here), never submitted twice; :mod:`.submitit_job`: what runs inside a job, and its requeue;
- :mod:`.stats`: mean, std, paired differences with t-intervals, Kendall's tau;
- :mod:`.report`: ``table.md``, ``table.csv``, ``table.tex``, ``table.png`` and ``runs.json``;
- :mod:`.figures`: a paper figure (``table=ssl_fig3``, ``ssl_fig4``) from the runs of the row it reads:
  :mod:`.logged_statistics` (SSL Figure 3), :mod:`.hard_examples` (SSL Figure 4);
- :mod:`.command`: the command line.
"""
