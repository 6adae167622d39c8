"""Speed benchmarks (pytest-benchmark, fixed batches) and their tables.

`pytest benchmarks/speed --benchmark-json=OUT/speed.json`, then
`python -m benchmarks.speed.table OUT/speed.json OUT` writes speed.csv and speed.md.
"""
