"""Executors that run batch work: a local process pool and Ray."""
