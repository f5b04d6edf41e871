"""The sketch machine's shared library: configuration, models, the Novita client, the stores and the steps."""
