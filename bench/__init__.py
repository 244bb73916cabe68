"""`make bench`: ClipGuard against its own in-process limit, side by side in one run.

bench/run.py orchestrates; bench/limit.py measures the plain in-process loop, bench/load.py
drives the real pipeline (Kafka requests, sync API), devtools/cluster.py starts and stops the
broker and worker processes, devtools/procs.py reads CPU time and memory from /proc, and
bench/stats.py holds the pure helpers (percentiles, verdicts, the table). See
docs/performance.md.
"""
