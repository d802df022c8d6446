"""What the tests (and the benchmark) share: the real parts they run and the waits they use.

Test modules import from here and from nowhere else in `tests` (never from another test module or conftest).

    database   one PostgreSQL server, the migrated template, a database per test
    receivers  an HTTP receiver on 127.0.0.1 that records every request
    daemon     `dispatcher run` as a subprocess, its configuration file and its JSON log
    cli        the `dispatcher` command as a user runs it
    factories  rows made directly in the database: webhooks, events, deliveries
    claims     claim_deliveries with readable arguments, and its statement for EXPLAIN
    waits      waiting for a fact (a value, a row, a log line, a marker event) instead of for a time
    api        the management API: a daemon per module, organisations with tokens, plain HTTP calls
    network    a fixed-answer DNS resolver and a free port
    chaos      the fault suite's counts, peak RSS, own PostgreSQL, hostile receivers, result rows
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
