"""Connection: a DSN form (password masked, never echoed) or the embedded server."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Protocol

import ipywidgets as w
import psycopg

from cdc_notebook.connection.conninfo import connect, describe_target, parse_conninfo
from cdc_notebook.widgets._base import Model, WidgetView, esc, message_html
from cdc_notebook.widgets.pump import held, set_changed


class EmbeddedServer(Protocol):
    """What the model uses of an embedded server
    (:class:`~cdc_notebook.server.postgres.PostgresServer`)."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> object: ...

    def stop(self) -> None: ...

    def conninfo(self) -> dict[str, Any]: ...


class ConnectionModel(Model):
    """Where to connect, and the open connection the other models use.

    The password is kept only in memory: it is not in ``repr``, messages or the widget after a
    successful connection (the form's field is emptied, so a saved notebook does not hold it).
    """

    def __init__(self, *, server_factory: Callable[[], EmbeddedServer] | None = None,
                 embedded: bool = True,
                 dsn: str | dict[str, Any] | None = None) -> None:
        super().__init__()
        self.embedded = embedded
        self.host = "localhost"
        self.port = 5432
        self.dbname = "postgres"
        self.user = "postgres"
        self.password = ""
        self.options = ""  # more libpq parameters: "sslmode=require application_name=x"
        if dsn is not None:
            self.use_dsn(dsn)
        self.connection: psycopg.Connection[Any] | None = None
        self.target: str | None = None  # user@host:port/db (PostgreSQL x.y)
        self.server: EmbeddedServer | None = None
        self._server_factory = server_factory
        self._owns_server = False
        self._conninfo: dict[str, Any] = {}
        self._listeners: list[Callable[[ConnectionModel], None]] = []

    def __repr__(self) -> str:
        return f"ConnectionModel(target={self.target!r}, embedded={self.embedded})"

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.closed

    def on_change(self, listener: Callable[[ConnectionModel], None]) -> None:
        """``listener(model)`` after every connect and disconnect (on the worker thread)."""
        self._listeners.append(listener)

    def use_dsn(self, dsn: str | dict[str, Any]) -> None:
        """Fill the form from a DSN (``key=value`` string, URL or dict of libpq parameters):
        not the embedded server; host, port, database, user and password in their fields, the
        other parameters in ``options``. A malformed DSN raises without quoting its password."""
        params = parse_conninfo(dsn)
        with self.lock:
            self.embedded = False
            self.host = str(params.pop("host", self.host))
            self.port = int(params.pop("port", self.port))
            self.dbname = str(params.pop("dbname", self.dbname))
            self.user = str(params.pop("user", self.user))
            self.password = str(params.pop("password", "") or "")
            params.pop("replication", None)
            self.options = " ".join(f"{k}={_quote_option(str(v))}" for k, v in params.items()
                                    if v is not None)
            self.bump()

    def conninfo(self) -> dict[str, Any]:
        """The parameters of the current connection, password included (keep it private)."""
        return dict(self._conninfo)

    def open(self, **overrides: Any) -> psycopg.Connection[Any]:
        """Another connection to the same server (status polls, the reader)."""
        if not self._conninfo:
            raise RuntimeError("not connected")
        return connect(self._conninfo, **overrides)

    def _params(self) -> dict[str, Any]:
        if self.embedded:
            if self.server is None:
                if self._server_factory is None:
                    from cdc_notebook.server.postgres import PostgresServer
                    self.server = PostgresServer()
                else:
                    self.server = self._server_factory()
                self._owns_server = self.server.pid is None
            if self.server.pid is None:
                self.server.start()
            return self.server.conninfo()
        params: dict[str, Any] = {}
        if self.options.strip():
            params.update(parse_conninfo(self.options))  # errors never quote a password
        params.update(host=self.host, port=int(self.port), dbname=self.dbname, user=self.user)
        if self.password:
            params["password"] = self.password
        return params

    def connect(self) -> Any:
        """Connect on the worker; errors become the model's message."""
        def work() -> None:
            self._close_connection()
            params = self._params()
            conn = connect(params)
            version = conn.info.parameter_status("server_version") or "?"
            with self.lock:
                self.connection = conn
                self._conninfo = params
                self.password = ""
                self.target = f"{describe_target(params)} (PostgreSQL {version})"
                self.info = f"connected to {self.target}"
            self._notify()
        return self.run("connecting", work)

    def disconnect(self) -> Any:
        def work() -> None:
            self._close_connection()
            with self.lock:
                self.info = "not connected"
            self._notify()
        return self.run("disconnecting", work)

    def _close_connection(self) -> None:
        with self.lock:
            conn, self.connection = self.connection, None
            self.target = None
            self._conninfo = {}
        if conn is not None:
            conn.close()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception as exc:  # noqa: BLE001 - shown, the connection itself is fine
                self.fail(exc)
        self.bump()

    def close(self) -> None:
        """Close the connection and stop the embedded server when this model started it."""
        self._close_connection()
        if self._owns_server and self.server is not None:
            self.server.stop()
            self.server = None
        self.shutdown()


_FIELDS = ("embedded", "host", "port", "dbname", "user", "options")


def _quote_option(value: str) -> str:
    """A libpq parameter value as ``key=value`` syntax writes it."""
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ConnectionWidget(WidgetView):
    """The form; a thin view over :class:`ConnectionModel`."""

    shows = ("connected", "busy", "error", "target", "embedded", "password", "host", "port",
             "dbname", "user", "options")

    def __init__(self, model: ConnectionModel) -> None:
        super().__init__(model)
        m = self.make
        style = {"description_width": "90px"}
        self.embedded = m(w.Checkbox(value=model.embedded, description="embedded server",
                                     indent=False))
        self.embedded.tooltip = ("a throwaway PostgreSQL started for this kernel; "
                                              "untick to connect to a server of yours")
        self.host = m(w.Text(value=model.host, description="host", style=style))
        self.port = m(w.BoundedIntText(value=model.port, min=1, max=65535, description="port",
                                       style=style))
        self.dbname = m(w.Text(value=model.dbname, description="database", style=style))
        self.user = m(w.Text(value=model.user, description="user", style=style))
        self.password = m(w.Password(value="", description="password", style=style))
        self.options = m(w.Text(value=model.options, description="options", style=style,
                                placeholder="sslmode=require ..."))
        self.connect_button = m(w.Button(description="Connect", button_style="primary"))
        self.disconnect_button = m(w.Button(description="Disconnect"))
        self.status = m(w.HTML())
        self.form = m(w.VBox([self.host, self.port, self.dbname, self.user, self.password,
                              self.options]))
        self.buttons = m(w.HBox([self.connect_button, self.disconnect_button]))
        self.box = m(w.VBox([m(w.HTML("<b>Connection</b>")), self.embedded, self.form,
                             self.buttons, self.status]))
        # what the form last took from the model (code may change the model: use_dsn, ...)
        self._pushed = {name: getattr(model, name) for name in _FIELDS}
        for name in ("embedded", "host", "port", "dbname", "user", "password", "options"):
            getattr(self, name).observe(self._copy(name), names="value")
        self.form.layout.display = "none" if model.embedded else ""
        self.connect_button.on_click(lambda _: model.connect())
        self.disconnect_button.on_click(lambda _: model.disconnect())
        self.refresh(0.0)

    def _copy(self, name: str) -> Callable[[dict[str, Any]], None]:
        def handler(change: dict[str, Any]) -> None:
            setattr(self.model, name, change["new"])
            if name in self._pushed:
                self._pushed[name] = change["new"]  # the user's value: nothing to push back
            if name == "embedded":
                # The DSN fields appear (or go) with the tick, not at the next refresh.
                self.form.layout.display = "none" if change["new"] else ""
                self.model.bump()
        return handler

    def show(self, state: SimpleNamespace) -> None:
        busy, connected = state.busy, state.connected
        if connected:
            text = f"connected to <b>{esc(state.target)}</b>"
        elif busy:
            text = f"{esc(busy)}…"
        else:
            text = "not connected"
        with held(self.status, self.connect_button, self.disconnect_button, self.password):
            set_changed(self.status, value=text + message_html(state.error, None))
            set_changed(self.connect_button, disabled=bool(busy))
            set_changed(self.disconnect_button, disabled=bool(busy) or not connected)
            if not state.password:
                set_changed(self.password, value="")
        with held(self.embedded, self.host, self.port, self.dbname, self.user, self.options):
            # Code may change the model (use_dsn, embedded=...): the form follows it. Only
            # values the model changed since the form last took them are written, so a value
            # being typed is never overwritten by an older copy.
            for name in _FIELDS:
                value = getattr(state, name)
                if value != self._pushed.get(name):
                    set_changed(getattr(self, name), value=value)
                    self._pushed[name] = value
        set_changed(self.form.layout, display="none" if state.embedded else "")
