"""Across runs: gathering results.csv files, building report tables, rendering them, pictures, the paper's numbers."""
