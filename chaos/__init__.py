"""The chaos run: sketches sent through the local stack while every fault happens at once, then an
audit of what the machine made and what Novita was paid (`python -m chaos`, `scripts/chaos.sh`)."""
