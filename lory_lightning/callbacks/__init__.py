"""Expert monitoring: routing statistics, utilization and domain specialization (LORY.md section 5)."""

from .monitor import DomainSpecialization, RoutingMonitor

__all__ = ["DomainSpecialization", "RoutingMonitor"]
