"""robustness stage."""
