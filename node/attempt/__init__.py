"""One attempt of one job: the pure policy, the runner that carries it out, and the attempt's machinery
(job context, checkpoints, artifacts, journal, the per-process monitor, routing)."""
