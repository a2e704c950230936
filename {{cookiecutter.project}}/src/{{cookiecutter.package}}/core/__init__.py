"""The task every engine trains: what a step computes (task), the networks (models), the data (data)."""
