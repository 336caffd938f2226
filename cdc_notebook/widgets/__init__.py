"""Widgets of the kit: thin views over plain-Python models, refreshed by one UI pump.

Each module holds one model (drivable from code) and its widget; :func:`explore` composes them.
"""

from cdc_notebook.widgets.chart import StatusChart
from cdc_notebook.widgets.connection import ConnectionModel, ConnectionWidget
from cdc_notebook.widgets.dashboard import Dashboard, ReaderModel, ReaderWidget, explore
from cdc_notebook.widgets.patterns import PatternsModel, PatternsWidget
from cdc_notebook.widgets.setup import SetupModel, SetupWidget
from cdc_notebook.widgets.status import StatusModel, StatusWidget
from cdc_notebook.widgets.summary import LiveSummary, SummaryModel, SummaryWidget
from cdc_notebook.widgets.table import TableViewModel, TableViewWidget

__all__ = [
    "ConnectionModel", "ConnectionWidget", "Dashboard", "PatternsModel", "PatternsWidget",
    "ReaderModel", "ReaderWidget", "SetupModel", "SetupWidget", "StatusChart", "StatusModel",
    "StatusWidget", "LiveSummary", "SummaryModel", "SummaryWidget", "TableViewModel", "TableViewWidget", "explore",
]
