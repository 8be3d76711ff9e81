"""Thin entry points, one per pipeline stage. Each has `get_parser()`, `run(args)` and `main(argv)`."""
