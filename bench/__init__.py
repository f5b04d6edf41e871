"""The benchmark: `scripts/bench.sh` (python -m bench) measures the real stack against limits
measured in the same run and prints a table; see bench/__main__.py."""
