"""On-disk formats, each read and written by one module: aligned folders, reps, checkpoints."""
