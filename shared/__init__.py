"""The sketch machine's shared library: configuration, models, Novita client, store and pipeline."""
