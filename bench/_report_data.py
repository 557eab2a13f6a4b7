"""Fast synthetic warehouse data for bench_report.py, generated inside DuckDB with SQL."""
