"""Model factories: tiny random-weight checkpoints for tests and the quickstart."""
