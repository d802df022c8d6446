"""Unit tests for dispatcher.config: loading, environment overrides, validation errors, masking, durations."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest

from dispatcher import config as config_module
from dispatcher.config import (
    Config,
    ConfigError,
    DatabaseConfig,
    MailConfig,
    SecretsConfig,
    effective_settings,
    format_duration,
    load_config,
    mask_url,
    parse_duration,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def write(tmp_path: Path, text: str, name: str = "dispatcher.toml") -> Path:
    """Write a dedented TOML file and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(path: Path | None = None, environ: dict[str, str] | None = None) -> ConfigError:
    """Load and return the ConfigError raised (failing the test when none is)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    return info.value


# ----------------------------------------------------------------------------------------------------------
# Defaults and files


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no path, no ./dispatcher.toml and no overrides, every setting has its documented default."""
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config == Config()
    assert config.source is None
    assert config.database.dsn is None
    assert config.database.data_dir == "dispatcher-data"
    assert config.api.listen == "127.0.0.1:8080"
    assert config.worker.poll_interval == 1.0
    assert config.worker.shutdown_grace == 20.0
    assert config.delivery.connect_timeout == 5.0
    assert config.delivery.timeout == 15.0
    assert config.delivery.max_response_bytes == 65536
    assert config.delivery.allow_networks == ()
    assert config.retry.schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert config.retry.jitter == 0.2
    assert config.health.disable_after_failures == 20
    assert config.health.max_hold == 3 * 86400
    assert config.retention.delivered == 7 * 86400
    assert config.retention.failed == 30 * 86400
    assert config.mail.from_ == "dispatcher@localhost"


def test_settings_are_frozen() -> None:
    """Validated settings cannot be changed after loading."""
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.worker.concurrency = 1  # type: ignore[misc]


def test_dispatcher_toml_in_the_working_directory_is_read_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no path given, ./dispatcher.toml is loaded when it exists and recorded as the source."""
    write(tmp_path, "[worker]\nconcurrency = 7\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.worker.concurrency == 7
    assert config.source == "dispatcher.toml"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """An explicitly named file that does not exist is an error naming it, not a silent fallback."""
    missing = tmp_path / "nope.toml"
    error = load_error(missing)
    assert str(error).startswith(f"{missing}: cannot read the configuration file")


def test_example_file_loads_to_exactly_the_defaults() -> None:
    """config.example.toml loads without error and yields exactly the built-in defaults."""
    config = load_config(EXAMPLE, environ={})
    assert config == dataclasses.replace(Config(), source=str(EXAMPLE))


def test_example_file_documents_every_key() -> None:
    """Every section and every key appears in config.example.toml (set, or commented out when unset)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, keys in effective_settings(Config()).items():
        header = re.search(rf"^\[{section}\]$", text, re.MULTILINE)
        assert header, f"[{section}] missing from the example"
        body = text[header.end() :].split("\n[", 1)[0]
        for key in keys:
            assert re.search(rf"^(# )?{key} = ", body, re.MULTILINE), f"[{section}] {key} missing"


def test_schema_covers_every_dataclass_field() -> None:
    """Each section's keys map one-to-one onto its dataclass fields, so no setting is unreachable."""
    assert config_module._schema_matches_dataclasses()


def test_file_values_are_typed(tmp_path: Path) -> None:
    """Values from a file arrive typed: ints, bools, durations as seconds, lists as tuples, mail's `from`."""
    path = write(
        tmp_path,
        """
        [database]
        dsn = "postgresql://dispatcher:pw@db:5432/dispatcher"
        pool_size = 4
        auto_migrate = false

        [worker]
        poll_interval = "250ms"
        shutdown_grace = 30
        lease_margin = "1m30s"

        [delivery]
        allow_networks = ["127.0.0.0/8", "::1/128"]
        timeout = 2.5

        [retry]
        schedule = ["1s", 2, "1m"]
        jitter = 0

        [events]
        types = ["request.create", "webhook_config.test"]

        [log]
        level = "DEBUG"

        [mail]
        host = "smtp.example.com"
        from = "hooks@example.com"
        """,
    )
    config = load_config(path, environ={})
    assert config.source == str(path)
    assert config.database == DatabaseConfig(
        dsn="postgresql://dispatcher:pw@db:5432/dispatcher", pool_size=4, auto_migrate=False
    )
    assert config.worker.poll_interval == 0.25
    assert config.worker.shutdown_grace == 30.0
    assert config.worker.lease_margin == 90.0
    assert config.delivery.allow_networks == ("127.0.0.0/8", "::1/128")
    assert config.delivery.timeout == 2.5
    assert config.retry.schedule == (1.0, 2.0, 60.0)
    assert config.retry.jitter == 0.0
    assert config.events.types == ("request.create", "webhook_config.test")
    assert config.log.level == "debug"
    assert config.mail == MailConfig(host="smtp.example.com", from_="hooks@example.com")
    assert config.api == Config().api


def test_empty_string_unsets_an_optional_setting(tmp_path: Path) -> None:
    """An empty string for an optional setting means "not set" (None), from a file or the environment."""
    path = write(tmp_path, '[mail]\nhost = ""\n')
    config = load_config(path, environ={"DISPATCHER_DATABASE__DSN": ""})
    assert config.mail.host is None
    assert config.database.dsn is None


# ----------------------------------------------------------------------------------------------------------
# Environment overrides


def test_env_override_parses_a_toml_value() -> None:
    """DISPATCHER_WORKER__POLL_INTERVAL='"200ms"' is a TOML string, read as a duration."""
    config = load_config(environ={"DISPATCHER_WORKER__POLL_INTERVAL": '"200ms"'})
    assert config.worker.poll_interval == 0.2


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DISPATCHER_WORKER__CONCURRENCY", "8", ("worker", "concurrency", 8)),
        ("DISPATCHER_API__ENABLED", "false", ("api", "enabled", False)),
        ("DISPATCHER_RETRY__JITTER", "0.5", ("retry", "jitter", 0.5)),
        ("DISPATCHER_WORKER__POLL_INTERVAL", "200ms", ("worker", "poll_interval", 0.2)),
        ("DISPATCHER_MAIL__FROM", "ops@example.com", ("mail", "from_", "ops@example.com")),
    ],
)
def test_env_override_types(name: str, value: str, expected: tuple[str, str, object]) -> None:
    """Unquoted env values take their TOML type (int, bool, float) or, if not TOML, the raw text."""
    section, attr, want = expected
    config = load_config(environ={name: value})
    assert getattr(getattr(config, section), attr) == want


def test_env_override_raw_string_fallback() -> None:
    """An env value that is not a TOML value (an unquoted DSN) is used as the raw string."""
    dsn = "postgresql://u@h/db"
    config = load_config(environ={"DISPATCHER_DATABASE__DSN": dsn})
    assert config.database.dsn == dsn


def test_env_override_list() -> None:
    """DISPATCHER_DELIVERY__ALLOW_NETWORKS='["127.0.0.0/8"]' is read as a TOML array."""
    config = load_config(environ={"DISPATCHER_DELIVERY__ALLOW_NETWORKS": '["127.0.0.0/8", "10.0.0.0/8"]'})
    assert config.delivery.allow_networks == ("127.0.0.0/8", "10.0.0.0/8")


def test_env_override_keeps_raw_text_for_string_keys() -> None:
    """A string setting whose env text is TOML of another type (a numeric password, `true`) keeps the text."""
    config = load_config(environ={"DISPATCHER_MAIL__PASSWORD": "123456", "DISPATCHER_MAIL__USERNAME": "true"})
    assert config.mail.password == "123456"
    assert config.mail.username == "true"


def test_env_override_beats_the_file(tmp_path: Path) -> None:
    """An env override replaces the file's value for that key and leaves the file's other keys alone."""
    path = write(tmp_path, "[worker]\nconcurrency = 5\nbatch_size = 7\n")
    config = load_config(path, environ={"DISPATCHER_WORKER__CONCURRENCY": "9"})
    assert config.worker.concurrency == 9
    assert config.worker.batch_size == 7


def test_env_variables_without_double_underscore_are_ignored() -> None:
    """DISPATCHER_URL / DISPATCHER_TOKEN (the CLI's) are not config overrides and cause no error."""
    config = load_config(environ={"DISPATCHER_URL": "http://x", "DISPATCHER_TOKEN": "t", "PATH": "/bin"})
    assert config == Config()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "DISPATCHER_WORKR__CONCURRENCY",
            "<env DISPATCHER_WORKR__CONCURRENCY>: [workr]: unknown section 'workr'; did you mean 'worker'?",
        ),
        (
            "DISPATCHER_WORKER__CONCURENCY",
            "<env DISPATCHER_WORKER__CONCURENCY>: [worker] concurency: unknown key 'concurency';"
            " did you mean 'concurrency'?",
        ),
    ],
)
def test_unknown_env_section_or_key_is_an_error(name: str, message: str) -> None:
    """A DISPATCHER_<SECTION>__<KEY> naming no setting is an error naming the variable and a close match."""
    assert str(load_error(environ={name: "1"})) == message


def test_env_error_names_the_variable_without_a_line() -> None:
    """A bad env value is reported as `<env NAME>: [section] key: reason`, with no line number."""
    error = load_error(environ={"DISPATCHER_WORKER__POLL_INTERVAL": '"10ms"'})
    assert (
        str(error) == "<env DISPATCHER_WORKER__POLL_INTERVAL>: [worker] poll_interval: must be at least 50ms (got 10ms)"
    )
    assert error.line is None
    assert (error.section, error.key) == ("worker", "poll_interval")


# ----------------------------------------------------------------------------------------------------------
# Errors with file, line and key


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    """An unknown key is reported as `<file>:<line>: [section] key: reason` at the key's own line."""
    path = write(
        tmp_path,
        """
        [api]
        enabled = true

        [worker]
        enabled = true
        pol_interval = "1s"
        """,
    )
    error = load_error(path)
    assert str(error) == f"{path}:6: [worker] pol_interval: unknown key 'pol_interval'; did you mean 'poll_interval'?"
    assert (error.file, error.line, error.section, error.key) == (str(path), 6, "worker", "pol_interval")


def test_unknown_section_names_its_header_line(tmp_path: Path) -> None:
    """An unknown section is reported at its `[header]` line with the known sections or a close match."""
    path = write(tmp_path, "[worker]\nconcurrency = 1\n\n[delivry]\ntimeout = 1\n")
    assert str(load_error(path)) == f"{path}:4: [delivry]: unknown section 'delivry'; did you mean 'delivery'?"


def test_line_is_found_in_the_right_section(tmp_path: Path) -> None:
    """A key that exists in several sections is located within its own section, not the first one."""
    path = write(tmp_path, '[api]\nenabled = true\n\n[worker]\n# comment\nenabled = "yes"\n')
    assert str(load_error(path)) == f"{path}:6: [worker] enabled: expected true or false, got a string"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('pool_size = "10"', "[database] pool_size: expected an integer, got a string"),
        ("pool_size = true", "[database] pool_size: expected an integer, got a boolean"),
        ("pool_size = 1.5", "[database] pool_size: expected an integer, got a float"),
        ("pool_size = 0", "[database] pool_size: must be at least 1 (got 0)"),
        ('auto_migrate = "true"', "[database] auto_migrate: expected true or false, got a string"),
        ("data_dir = 3", "[database] data_dir: expected a string, got an integer"),
        ("dsn = 5", "[database] dsn: expected a string, got an integer"),
    ],
)
def test_wrong_type_names_line_key_and_reason(tmp_path: Path, line: str, message: str) -> None:
    """A value of the wrong type (bool for int, string for bool, ...) is an error at its line."""
    path = write(tmp_path, f"# settings\n[database]\n{line}\n")
    assert str(load_error(path)) == f"{path}:3: {message}"


def test_bad_duration_names_line_and_key(tmp_path: Path) -> None:
    """`poll_interval = "fast"` is an error at its line naming the key and how to write a duration."""
    path = write(tmp_path, '[worker]\nconcurrency = 4\npoll_interval = "fast"\n')
    error = load_error(path)
    assert str(error).startswith(f"{path}:3: [worker] poll_interval: invalid duration 'fast':")
    assert '"5s"' in error.reason


def test_bad_duration_in_a_list_names_the_item(tmp_path: Path) -> None:
    """A bad entry in `[retry] schedule` is reported at the key's line with the item's position."""
    path = write(tmp_path, '[retry]\nschedule = [\n  "5s",\n  "soon",\n]\n')
    assert str(load_error(path)).startswith(f"{path}:2: [retry] schedule: item 2: invalid duration 'soon'")


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """A TOML syntax error is re-raised as ConfigError carrying the file and the line tomllib reported."""
    path = write(tmp_path, "[worker]\nconcurrency = 4\nbatch_size = = 3\n")
    error = load_error(path)
    assert error.line == 3
    assert str(error).startswith(f"{path}:3: invalid TOML: ")


def test_poll_interval_below_50ms_is_rejected(tmp_path: Path) -> None:
    """poll_interval must be at least 50ms: 49ms is refused at its line, 50ms is accepted."""
    path = write(tmp_path, '[worker]\npoll_interval = "49ms"\n')
    assert str(load_error(path)) == f"{path}:2: [worker] poll_interval: must be at least 50ms (got 49ms)"
    assert load_config(write(tmp_path, '[worker]\npoll_interval = "50ms"\n'), environ={}).worker.poll_interval == 0.05


@pytest.mark.parametrize(
    ("section", "line", "reason"),
    [
        ("retry", "jitter = 1", "must be at least 0 and less than 1 (got 1)"),
        ("retry", "jitter = -0.1", "must be at least 0 and less than 1 (got -0.1)"),
        ("delivery", "timeout = 0", "must be more than 0s (got 0s)"),
        ("delivery", 'allow_networks = ["localhost"]', "item 1: 'localhost' is not a network"),
        (
            "delivery",
            'allow_networks = ["10.0.0.1/8"]',
            "item 1: '10.0.0.1/8' has host bits set; did you mean '10.0.0.0/8'?",
        ),
        ("delivery", 'allow_networks = "127.0.0.0/8"', "expected an array of CIDR strings, got a string"),
        ("delivery", 'proxy = "socks5://p:1080"', "expected a URL such as"),
        ("api", 'listen = "8080"', 'expected "host:port"'),
        ("api", 'listen = "127.0.0.1:70000"', "port must be at most 65535"),
        ("api", 'public_url = "example.com"', "expected an http(s) URL"),
        ("log", 'level = "verbose"', "must be one of debug, info, warning, error (got 'verbose')"),
        ("log", 'format = "xml"', "must be one of auto, json, console (got 'xml')"),
        ("mail", "port = 0", "must be at least 1 (got 0)"),
        ("mail", 'from = "nobody"', "expected an e-mail address"),
        ("events", 'types = ["a.b", "a.b"]', "item 2: 'a.b' is listed twice"),
        ("events", 'types = ["request.*"]', "is not an event type"),
        ("database", 'dsn = "mysql://u:secret@h/db"', "expected a URL such as"),
    ],
)
def test_out_of_range_values_are_rejected(tmp_path: Path, section: str, line: str, reason: str) -> None:
    """Values of the right type but outside what the daemon can use are errors naming section and key."""
    path = write(tmp_path, f"[{section}]\n{line}\n")
    key = line.split(" =")[0]
    message = str(load_error(path))
    assert message.startswith(f"{path}:2: [{section}] {key}: ")
    assert reason in message


def test_errors_never_echo_secret_values(tmp_path: Path) -> None:
    """A malformed DSN is reported without repeating the value (it may hold a password)."""
    path = write(tmp_path, '[database]\ndsn = "mysql://u:hunter2@h/db"\n')
    assert "hunter2" not in str(load_error(path))


def test_config_error_format_without_line() -> None:
    """ConfigError leaves out the line when unknown and the section/key when not about one key."""
    assert str(ConfigError("bad", file="f.toml", section="api", key="listen")) == "f.toml: [api] listen: bad"
    assert str(ConfigError("bad", file="f.toml", line=3)) == "f.toml:3: bad"
    assert str(ConfigError("bad")) == "bad"


# ----------------------------------------------------------------------------------------------------------
# effective_settings


def test_effective_settings_masks_secrets_and_renders_durations() -> None:
    """`config show` data: DSN/proxy passwords, mail password and encryption key masked; durations as text."""
    config = dataclasses.replace(
        Config(),
        database=DatabaseConfig(dsn="postgresql://app:s3cret@db.internal:5432/hooks"),
        mail=MailConfig(host="smtp", username="ops", password="mailpw"),
        secrets=SecretsConfig(encryption_key="k3y"),
        delivery=dataclasses.replace(Config().delivery, proxy="http://user:proxypw@proxy:3128"),
    )
    settings = effective_settings(config)
    assert settings["database"]["dsn"] == "postgresql://app:***@db.internal:5432/hooks"
    assert settings["delivery"]["proxy"] == "http://user:***@proxy:3128"
    assert settings["mail"]["password"] == "***"
    assert settings["mail"]["username"] == "ops"
    assert settings["secrets"]["encryption_key"] == "***"
    rendered = repr(settings)
    for secret in ("s3cret", "mailpw", "k3y", "proxypw"):
        assert secret not in rendered
    assert settings["worker"]["poll_interval"] == "1s"
    assert settings["health"]["min_failing_period"] == "1h"
    assert settings["health"]["max_hold"] == "3d"
    assert settings["retry"]["schedule"] == ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]
    assert settings["mail"]["from"] == "dispatcher@localhost"


def test_effective_settings_of_defaults_leaves_unset_secrets_none() -> None:
    """Unset secrets show as None (not "***"), and every section and key is listed."""
    settings = effective_settings(Config())
    assert settings["database"]["dsn"] is None
    assert settings["mail"]["password"] is None
    assert settings["secrets"]["encryption_key"] is None
    assert list(settings) == [
        "database", "api", "worker", "delivery", "retry", "health",
        "events", "retention", "log", "metrics", "mail", "secrets",
    ]  # fmt: skip
    assert sum(len(keys) for keys in settings.values()) == 47


def test_effective_settings_round_trip_through_load_config(tmp_path: Path) -> None:
    """The rendered settings (secrets unset) written back as TOML load to the same Config."""
    config = load_config(
        write(tmp_path, '[worker]\npoll_interval = "1.5s"\n[retry]\nschedule = ["50ms", "90m"]\n'), environ={}
    )
    lines: list[str] = []
    for section, keys in effective_settings(config).items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            if value is not None:
                lines.append(f"{key} = {_toml(value)}")
    reloaded = load_config(write(tmp_path, "\n".join(lines), name="again.toml"), environ={})
    assert dataclasses.replace(reloaded, source=None) == dataclasses.replace(config, source=None)


def _toml(value: object) -> str:
    """Render a simple value as TOML for the round-trip test."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host/db", "postgresql://host/db"),
        ("postgresql://:pw@host/db", "postgresql://:***@host/db"),
        (
            "postgresql://u:p@ss@host:5432/db?sslmode=require",
            "postgresql://u:***@host:5432/db?sslmode=require",
        ),
        ("postgresql://u:pa?ss@host/db", "postgresql://u:***@host/db"),
        (
            "postgresql://host/db?password=pw&sslmode=require",
            "postgresql://host/db?password=***&sslmode=require",
        ),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    """Passwords in URLs are replaced by *** wherever they sit; URLs without one are unchanged."""
    assert mask_url(url) == masked


# ----------------------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("50ms", 0.05),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("3d", 259200.0),
        ("1h30m", 5400.0),
        (" 10s ", 10.0),
        ("0s", 0.0),
        ("30", 30.0),
        (5, 5.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    """Numbers are seconds; strings take ms, s, m, h or d (combinable, e.g. 1h30m)."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("fast", "invalid duration 'fast'"),
        ("", "invalid duration ''"),
        ("5 min", "unknown unit 'min'"),
        ("5S", "unknown unit 'S'"),
        ("-5s", "is negative"),
        (-1, "is negative"),
        (float("inf"), "not a finite number"),
        (float("nan"), "not a finite number"),
        (True, "got a boolean"),
        (["5s"], "got an array"),
        (None, "expected a duration"),
    ],
)
def test_parse_duration_rejects(value: object, reason: str) -> None:
    """Malformed, negative, infinite and non-duration values raise ValueError saying why."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.05, "50ms"), (1.5, "1.5s"), (90, "90s"), (300, "5m"), (3600, "1h"), (604800, "7d")],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Durations render in their largest whole unit and parse back to the same value."""
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_malformed_encryption_key_is_refused_with_its_line(tmp_path: Path) -> None:
    """A [secrets] encryption_key that is not the base64 of 32 bytes fails loading (so `config check` and startup)
    with the file, line and key, and the message does not repeat the key."""
    path = tmp_path / "dispatcher.toml"
    path.write_text('[api]\nenabled = true\n\n[secrets]\nencryption_key = "k3y"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}:5: [secrets] encryption_key: expected the base64 of 32 random bytes")
    assert "k3y" not in str(caught.value)
