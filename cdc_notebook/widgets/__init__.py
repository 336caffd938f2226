"""Widgets of the kit: thin views over plain-Python models, refreshed by one UI pump.

Each module holds one model (drivable from code) and its widget; :func:`explore` composes them.
"""

from .connection import ConnectionModel, ConnectionWidget
from .dashboard import Dashboard, ReaderModel, ReaderWidget, explore
from .patterns import PatternsModel, PatternsWidget
from .setup import SetupModel, SetupWidget
from .status import StatusChart, StatusModel, StatusWidget
from .summary import LiveSummary, SummaryModel, SummaryWidget
from .table import TableViewModel, TableViewWidget

__all__ = [
    "ConnectionModel", "ConnectionWidget", "Dashboard", "PatternsModel", "PatternsWidget",
    "ReaderModel", "ReaderWidget", "SetupModel", "SetupWidget", "StatusChart", "StatusModel",
    "StatusWidget", "LiveSummary", "SummaryModel", "SummaryWidget", "TableViewModel", "TableViewWidget", "explore",
]
