"""The pipeline's steps as plain functions over narrow interfaces (``steps.interfaces``):
the Dagster assets call them, so do the CLI and the benchmarks, and the unit tests call them
with in-memory stores. No step branches on a URL or reaches into a store's internals."""
