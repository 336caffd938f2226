"""No password in any message (issue 14): malformed and wrong connection strings that carry a
password go through every path a user takes — ``connect``, ``CDCStream``, the throwaway
server's connection helpers and log, the widgets' connection model and its widget — and every
surface is searched for the password and its distinctive fragments: exception ``str`` and
``repr`` (and their causes), ``repr`` of the objects, logs captured with caplog (DEBUG, every
logger), stderr, widget values and the comm messages a notebook would receive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import comm
import pytest
from comm.base_comm import BaseComm

from cdc_notebook.connection.conninfo import connect, parse_conninfo, redact_conninfo, redact_text
from cdc_notebook.errors import AuthenticationFailed, CDCError, ConnectionFailed
from cdc_notebook.provision.plan import scram_verifier
from cdc_notebook.server.postgres import PostgresServer
from cdc_notebook.stream.cdc_stream import CDCStream
from cdc_notebook.widgets import ConnectionModel, ConnectionWidget

# (connection string template, the password the user meant, fragments that must not show)
MALFORMED = [
    # a space in an unquoted password: libpq stops at the second half ("missing = after ...")
    ("host=127.0.0.1 port={port} user=postgres password=se Kr3tQx dbname=postgres",
     "se Kr3tQx", ["Kr3tQx"]),
    # an unescaped @ in a URL's password: libpq would take "Zq@Xw9@127.0.0.1" apart
    ("postgresql://postgres:Zq@Xw9@127.0.0.1:{port}/postgres", "Zq@Xw9", ["Zq@Xw9", "Xw9@"]),
    # an unterminated quote
    ("host=127.0.0.1 port={port} password='unterminated Vb7Yhq", "unterminated Vb7Yhq",
     ["Vb7Yhq"]),
    # a bad percent-encoding and a space inside a URL's password
    ("postgresql://postgres:pa%zzQ9k@127.0.0.1:{port}/postgres", "pa%zzQ9k", ["zzQ9k"]),
    ("postgresql://postgres:sec Rq4Tz@127.0.0.1:{port}/postgres", "sec Rq4Tz", ["Rq4Tz"]),
    # password=... followed by something libpq does not know
    ("host=127.0.0.1 port={port} password=a b=Lm5Np0 user=postgres", "a b=Lm5Np0", ["Lm5Np0"]),
]
WRONG = "Wr0ng-Pw9 with spaces"  # well formed, quoted, but not the server's


class RecordingComm(BaseComm):
    """What the kernel would publish on iopub, recorded instead."""

    sent: ClassVar[list[Any]] = []

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        RecordingComm.sent.append((msg_type, data, self.comm_id))


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    yield RecordingComm.sent


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every logger: the kit's, psycopg's
    return caplog


def _surfaces(exc: BaseException | None) -> list[str]:
    """str and repr of an exception, its notes, its cause and context, and their args."""
    out: list[str] = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc), repr(exc.args), *getattr(exc, "__notes__", [])]
        if isinstance(exc, CDCError):
            out += [exc.message, exc.hint or ""]
        exc = exc.__cause__ or exc.__context__
    return out


def _assert_hidden(texts: list[str], secret: str, fragments: list[str], where: str) -> None:
    for text in texts:
        for needle in [secret, *fragments]:
            assert needle not in text, f"{where}: {needle!r} shown in {text!r}"


def _cases(port: int) -> list[tuple[str, str, list[str]]]:
    return [(dsn.format(port=port), secret, frags) for dsn, secret, frags in MALFORMED]


def test_parse_errors_and_redaction_never_show_a_password() -> None:
    for dsn, secret, frags in _cases(5432):
        with pytest.raises(ConnectionFailed) as info:
            parse_conninfo(dsn)
        _assert_hidden(_surfaces(info.value), secret, frags, f"parse_conninfo({dsn!r})")
        _assert_hidden([redact_conninfo(dsn)], secret, frags, "redact_conninfo")
        # free text holding the malformed string: every part of the password is masked (but
        # "password=a b=c" is ambiguous: libpq itself reads b=c as another option)
        _assert_hidden([redact_text(dsn)], secret, [] if "=" in secret else frags,
                       "redact_text")
    # what libpq says stays useful where the string cannot hold a password
    with pytest.raises(ConnectionFailed, match='invalid connection option "colour"'):
        parse_conninfo("host=x colour=blue")
    # SQL and URL forms in free text (a server log, a statement shown to the user)
    assert redact_text("ALTER ROLE r PASSWORD 'it''s Kq8' LOGIN") == \
        "ALTER ROLE r PASSWORD '********' LOGIN"
    assert "Kq8" not in redact_text("postgresql://u:Kq8@h/db and password=Kq8")


def test_connect_and_cdcstream_with_malformed_dsns(pg: PostgresServer, all_logs: Any,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    for dsn, secret, frags in _cases(pg.port or 5432):
        for attempt in (lambda d=dsn: connect(d), lambda d=dsn: CDCStream(d, "public.*"),
                        lambda d=dsn: connect(d, replication=True)):
            with pytest.raises(ConnectionFailed) as info:
                attempt()
            _assert_hidden(_surfaces(info.value), secret, frags, f"{dsn!r}")
        _assert_hidden([r.getMessage() for r in all_logs.records] + [all_logs.text], secret,
                       frags, "logs")
    out, err = capfd.readouterr()
    for _dsn, secret, frags in _cases(pg.port or 5432):
        _assert_hidden([out, err], secret, frags, "stdout/stderr")


def test_a_wrong_password_over_tcp(pg: PostgresServer, all_logs: Any) -> None:
    params = pg.conninfo("tcp", password=WRONG)
    quoted = WRONG.replace("'", "\\'")
    dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres password='{quoted}'"
    for attempt in (lambda: connect(params), lambda: connect(dsn),
                    lambda: CDCStream(dsn, "public.*"), lambda: CDCStream(params, "public.*")):
        with pytest.raises(AuthenticationFailed) as info:
            attempt()
        _assert_hidden(_surfaces(info.value), WRONG, ["Wr0ng-Pw9"], "wrong password")
    _assert_hidden([all_logs.text], WRONG, ["Wr0ng-Pw9"], "logs")


def test_the_server_its_log_and_a_stream_hold_no_password(pg: PostgresServer, all_logs: Any,
                                                          unique_name: Any) -> None:
    assert pg.password not in repr(pg) and pg.password not in str(pg.conninfo("unix"))
    # A failed statement with a password literal lands in the server's log; the log as the
    # kit quotes it (errors, log_tail) is redacted.
    role = unique_name("role")
    with pg.connect() as conn, pytest.raises(Exception, match=r"(?i)not_an_option"):
        conn.execute(f"CREATE ROLE {role} PASSWORD 'Hj6Tr2 leaked' NOT_AN_OPTION")
    tail = pg.log_tail(200)
    assert "NOT_AN_OPTION" in tail or "not_an_option" in tail  # the statement is there ...
    _assert_hidden([tail], "Hj6Tr2 leaked", ["Hj6Tr2"], "log_tail")  # ... not its password
    # A stream opened over TCP with the generated password: its repr, status and summary, and
    # the redacted conninfo, hold none of it.
    schema = unique_name("sec")
    with pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (id int PRIMARY KEY)")
    stream = CDCStream(pg.conninfo("tcp"), f"{schema}.*", temporary=True)
    try:
        status = stream.status()
        texts = [repr(stream), str(status), repr(status), status.summary(),
                 redact_conninfo(stream.conninfo), str(stream.readers)]
    finally:
        stream.close()
    _assert_hidden([*texts, all_logs.text], pg.password, [], "stream")


def test_the_connection_widget_with_malformed_options(pg: PostgresServer, comms: Any,
                                                      all_logs: Any) -> None:
    for dsn, secret, frags in _cases(pg.port or 5432):
        model = ConnectionModel(embedded=False)
        view = ConnectionWidget(model)
        view.host.value, view.port.value, view.user.value = "127.0.0.1", pg.port, "postgres"
        view.options.value = dsn  # a whole DSN pasted into "options"
        view.connect_button.click()
        model.wait()
        view.refresh(0)
        assert not model.connected and model.error
        field = view.options.model_id  # the field the user typed it in shows it back, as typed
        shown = [json.dumps(data, default=repr) for _, data, comm_id in comms
                 if comm_id != field]
        _assert_hidden([model.error or "", repr(model), view.status.value, *shown,
                        all_logs.text], secret, frags, f"widget with {dsn!r}")
        model.close()
        view.close()
        comms.clear()


def test_scram_verifier_comes_from_libpq() -> None:
    one, two = scram_verifier("pässwörd Ⅸ"), scram_verifier("pässwörd Ⅸ")
    assert one.startswith("SCRAM-SHA-256$4096:") and one != two  # a random salt each time
    assert "pässwörd" not in one
