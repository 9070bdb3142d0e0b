"""Routing statistics, domain specialization and their figures (LORY.md section 5), with no Lightning:
the monitoring callbacks, `lory analyze` and `lory replicate` all read routing through this wing."""
