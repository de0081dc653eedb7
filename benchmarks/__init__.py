"""Speed and memory benchmarks of swag against its peers and a memory-bandwidth reference.

Run ``python -m benchmarks.run --help``; see ``docs/benchmarks.md`` for the method and results.
"""
