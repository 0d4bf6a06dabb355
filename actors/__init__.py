"""Workload actors. Each module declares its actors on the current Dramatiq broker when imported."""
