"""Lightning callbacks: expert monitoring (adapting lory_lightning.routing to Lightning), the
non-finite guard, the validation record (per-domain NLL sums), and what Lightning's ThroughputMonitor needs to read a batch."""

from .guard import NonFiniteError, NonFiniteGuard
from .monitor import DomainSpecialization, RoutingMonitor
from .record import ValidationRecord
from .throughput import batch_rows, batch_tokens

__all__ = ["DomainSpecialization", "NonFiniteError", "NonFiniteGuard", "RoutingMonitor", "ValidationRecord", "batch_rows",
           "batch_tokens"]
