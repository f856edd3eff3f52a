"""A meter-fleet simulator speaking DL/T 645-2007 over TCP, for the run command, tests and
benchmarks: ``Fleet`` (the meters, deterministic from a seed), ``SimulatorServer`` (asyncio,
one port per gateway) and ``run_in_thread`` (for synchronous callers). The management
command is ``python manage.py meter_simulator``."""

from .fleet import Fleet, MeterSpec, SimClock, SimMeter
from .server import SimulatorServer, SimulatorThread, run_in_thread

__all__ = [
    "Fleet",
    "MeterSpec",
    "SimClock",
    "SimMeter",
    "SimulatorServer",
    "SimulatorThread",
    "run_in_thread",
]
