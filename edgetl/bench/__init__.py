"""Benchmarks behind ``edgetl bench``: one module per subcommand (``data``: input pipelines vs model)."""
