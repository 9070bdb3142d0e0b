"""Expert monitoring callbacks: they adapt lory_lightning.routing (statistics, specialization, figures) to Lightning."""

from .monitor import DomainSpecialization, RoutingMonitor

__all__ = ["DomainSpecialization", "RoutingMonitor"]
