"""Evidence for the LIPO claims: grids of training runs and their reports."""
