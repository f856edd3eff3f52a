"""The head-end's protocol-adapter interface. Metering services depend on this, never on a
particular protocol; ``get_adapter(protocol)`` returns the adapter for a meter."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol


class HeadEndError(Exception):
    """A meter could not be read or controlled. ``kind`` is one of:
    timeout, connection, bad_frame, refused (the meter answered with an error), mismatch
    (the answer was for another address or function)."""

    def __init__(self, kind: str, message: str, *, endpoint: str = "", address: str = ""):
        self.kind = kind
        self.endpoint = endpoint
        self.address = address
        super().__init__(message)


@dataclass
class RelayStatus:
    relay_open: bool  # True = tripped (no power)
    keep_power: bool
    alarm: bool
    raw_status_word: int


@dataclass
class MeterRegisters:
    address: str
    read_at: datetime
    forward_total: Decimal
    forward_sharp: Decimal | None = None
    forward_peak: Decimal | None = None
    forward_flat: Decimal | None = None
    forward_valley: Decimal | None = None
    reverse_total: Decimal | None = None
    reactive_total: Decimal | None = None
    max_demand_kw: Decimal | None = None
    remaining_balance: Decimal | None = None
    status: RelayStatus | None = None
    missing: list[str] = field(default_factory=list)  # registers the meter did not answer


class ProtocolAdapter(Protocol):
    async def read_registers(
        self, endpoint: str, address: str, *, include_balance: bool = False, timeout: float = 3.0
    ) -> MeterRegisters: ...

    async def read_status(self, endpoint: str, address: str, *, timeout: float = 3.0) -> RelayStatus: ...

    async def control(
        self, endpoint: str, address: str, action: str, *, valid_until: datetime, timeout: float = 3.0
    ) -> None:
        """Send a remote-control command; return when the meter acknowledged it, raise
        HeadEndError(kind="refused") if it answered with an error."""
        ...
