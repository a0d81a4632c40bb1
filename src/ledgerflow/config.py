"""Settings from environment variables (`LEDGERFLOW_*`) and an optional `ledgerflow.toml`.

Environment wins over the file. A bad value raises `ConfigError` whose one-line
message names the variable, so start-up never ends in a traceback or a silent default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ledgerflow.db.backends import SessionLimits
from ledgerflow.errors import BadInput, ConfigError

if TYPE_CHECKING:
    from ledgerflow.export.profiles import Profile

ENV_PREFIX = "LEDGERFLOW_"


def normalise_database_url(url: str) -> str:
    """Map `postgresql://` and `postgres://` to the psycopg 3 driver; check the scheme."""
    url = url.strip()
    scheme = url.split(":", 1)[0]
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg:" + url.split(":", 1)[1]
    if scheme in ("postgresql+psycopg", "sqlite"):
        if scheme == "sqlite" and not url.startswith("sqlite:///"):
            raise ValueError(f"malformed SQLite URL {url!r} (expected sqlite:///PATH)")
        return url
    raise ValueError(f"unsupported database URL {url!r} (use sqlite:///PATH or postgresql://...)")


def check_timezone(name: str) -> str:
    """Return `name` if it is a known IANA zone, else raise ValueError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


def check_destination(url: str) -> str:
    """Accept `file://DIR`, `gdrive://FOLDER_ID` or `s3://BUCKET[/PREFIX]`."""
    parsed = urlparse(url)
    if parsed.scheme == "file" and (parsed.netloc or parsed.path):
        return url
    if parsed.scheme in ("gdrive", "s3") and parsed.netloc:
        return url
    raise ValueError(
        f"malformed destination {url!r} (use file://DIR, gdrive://FOLDER_ID or s3://BUCKET/PREFIX)"
    )


class Settings(BaseSettings):
    """Every knob of ledgerflow; field `x` is variable `LEDGERFLOW_X`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: str = "sqlite:///./ledgerflow.db"
    timezone: str = "Asia/Bangkok"
    daily_export_cron: str = "0 18 * * *"
    export_destination: str = "file://./exports"
    export_profile: str = "generic"
    export_generation_timeout: float = Field(30.0, gt=0)
    export_bom: bool | None = None
    export_date_style: Literal["iso", "dmy", "buddhist"] | None = None
    export_encoding: str | None = None
    export_formula_guard: bool | None = None  # None: the profile's default (on for every profile)
    export_tax_accounts: str | None = None  # comma-separated codes or names of tax lines
    export_work_dir: str | None = None  # temp files between saga steps (default: system temp dir)
    export_lock_seconds: float = Field(60.0, gt=0)
    destination_timeout: float = Field(30.0, gt=0)  # seconds per Drive/S3 request
    gdrive_endpoint: str | None = None  # a Drive-compatible server instead of googleapis.com
    s3_endpoint_url: str | None = None  # an S3-compatible server (MinIO, moto, ...)
    api_token: SecretStr | None = None  # unset: `serve` makes one and keeps it in api_token_file
    api_token_file: str | None = None  # default: beside the SQLite file, else ./ledgerflow.token
    metrics_token: SecretStr | None = None  # set: /metrics and /api/health* need it (or the API token)
    allowed_hosts: str | None = None  # Host header allow-list; default: bind address and loopback names
    alert_webhook_url: str | None = None
    alert_email: str | None = None
    smtp_url: str | None = None
    app: str | None = None
    log_level: str = "INFO"
    log_json: bool | None = None

    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    sqlite_busy_timeout: float = Field(30.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    # PostgreSQL session limits, seconds (0: off)
    db_statement_timeout: float = Field(SessionLimits.statement_timeout, ge=0)
    db_lock_timeout: float = Field(SessionLimits.lock_timeout, ge=0)
    db_idle_in_transaction_timeout: float = Field(SessionLimits.idle_in_transaction_timeout, ge=0)
    db_pool_size: int = Field(5, ge=1)  # pooled connections per process (plus 10 overflow)
    db_pool_timeout: float = Field(30.0, gt=0)  # seconds to wait for a free pooled connection
    lease_seconds: float = Field(6.0, ge=1)  # a killed worker's jobs run again 7-10 s later
    heartbeat_seconds: float = Field(1.5, gt=0)  # a lease survives three missed heartbeats
    rescue_interval: float = Field(0.5, gt=0)
    grace_seconds: float = Field(25.0, ge=0)
    max_abandoned_threads: int = Field(5, ge=1)
    max_snoozes: int = Field(100, ge=0)  # a job that snoozes more often fails (dead) with a clear error
    prune_after_days: int = Field(30, ge=1)  # completed/cancelled jobs and their executions
    prune_fires_after_days: int = Field(90, ge=1)  # schedule_fires rows
    prune_alerts_after_days: int = Field(90, ge=1)  # resolved alerts
    prune_workers_after_days: int = Field(7, ge=1)  # rows of stopped or vanished workers/schedulers
    prune_export_work_after_days: int = Field(7, ge=1)  # work folders of completed/abandoned batches
    backup_dir: str = "./backups"
    backup_keep: int = Field(8, ge=1)
    backup_destination: str | None = None  # file://DIR, gdrive://FOLDER_ID or s3://BUCKET/PREFIX

    imap_host: str | None = None
    imap_port: int | None = Field(None, ge=1, le=65535)  # default 993 with SSL, 143 without
    imap_user: str | None = None
    imap_password: SecretStr | None = None
    imap_oauth2_token_file: str | None = None  # set: XOAUTH2 (Gmail, Microsoft 365) instead of a password
    imap_ssl: bool = True
    imap_mailbox: str = "INBOX"
    imap_timeout: float = Field(30.0, gt=0)
    receipts_dir: str = "./receipts"
    receipt_destination: str | None = None  # default: the export destination
    receipt_min_confidence: float = Field(0.7, ge=0, le=1)
    receipt_max_bytes: int = Field(20 * 2**20, ge=1024)
    payload_max_depth: int = Field(32, ge=2, le=1000)  # args, kwargs and results of jobs
    payload_max_bytes: int = Field(256 * 1024, ge=1024)
    result_max_bytes: int = Field(256 * 1024, ge=1024)  # a larger result fails the attempt (dead)
    receipt_currency: str = "THB"  # when the text does not say
    receipt_expense_account: str = "5900:Miscellaneous expense"
    receipt_tax_account: str = "1500:Input tax"
    receipt_credit_account: str = "1000:Cash"
    # vendor/text/amount rules with a priority (see receipts/rules.py), or keyword -> "CODE:Account"
    receipt_rules: list[dict[str, Any]] | dict[str, str] = []

    health_cron_max_age_hours: float = Field(26.0, gt=0)
    alert_check_seconds: float = Field(10.0, gt=0)  # how often each worker runs the alert checks
    alert_queue_depth: int = Field(10_000, ge=1)  # waiting jobs in one queue that raise an alert
    alert_queue_depths: dict[str, int] = {}  # per-queue thresholds, e.g. {"exports": 50}
    alert_scheduler_silence_seconds: float = Field(120.0, gt=0)  # no scheduler heartbeat for this long
    alert_dlq_size: int = Field(100, ge=1)  # dead jobs across all tasks
    #: an alert recorded this long ago with no delivery recorded is sent again by the checks
    alert_redeliver_after_seconds: float = Field(60.0, gt=0)
    autostop_consecutive_failures: int = Field(25, ge=1)
    autostop_failure_rate: float = Field(0.6, gt=0, le=1)
    autostop_min_attempts: int = Field(20, ge=1)
    autostop_dead_jobs: int = Field(100, ge=1)
    autostop_memory_percent: float = Field(95.0, gt=0, le=100)
    autostop_cpu_enabled: bool = False
    autostop_cpu_percent: float = Field(90.0, gt=0, le=100)
    autostop_cpu_seconds: float = Field(300.0, gt=0)

    @field_validator("api_token", "metrics_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_token(value.get_secret_value())
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: str | None) -> str | None:
        if value is not None:
            parse_allowed_hosts(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("export_destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        return check_destination(value)

    @field_validator("receipt_destination")
    @classmethod
    def _receipt_destination(cls, value: str | None) -> str | None:
        return check_destination(value) if value else None

    @field_validator("backup_destination")
    @classmethod
    def _backup_destination(cls, value: str | None) -> str | None:
        return check_destination(value) if value else None

    @field_validator("receipt_expense_account", "receipt_tax_account", "receipt_credit_account")
    @classmethod
    def _account(cls, value: str) -> str:
        return check_account(value)

    @field_validator("receipt_rules")
    @classmethod
    def _rules(cls, value: list[dict[str, Any]] | dict[str, str]) -> list[dict[str, Any]] | dict[str, str]:
        from ledgerflow.receipts.rules import parse_rules

        parse_rules(value)  # ValueError naming the rule and the field
        return value

    @field_validator("alert_queue_depths")
    @classmethod
    def _queue_depths(cls, value: dict[str, int]) -> dict[str, int]:
        from ledgerflow.names import check_name

        for queue, limit in value.items():
            try:
                check_name(queue, "queue")
            except BadInput as exc:
                raise ValueError(str(exc)) from None
            if limit < 1:
                raise ValueError(f"queue {queue!r}: the threshold must be at least 1, got {limit}")
        return value

    @field_validator("receipt_currency")
    @classmethod
    def _receipt_currency(cls, value: str) -> str:
        from ledgerflow.ledger.money import check_currency

        try:
            return check_currency(value)
        except BadInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("daily_export_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from ledgerflow.scheduler.cron import parse_cron

        try:
            parse_cron(value)
        except BadInput as exc:  # pydantic names the variable only for ValueError
            raise ValueError(str(exc)) from None
        return value

    @field_validator("export_profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        from ledgerflow.export.profiles import PROFILES

        if value not in PROFILES:
            raise ValueError(f"unknown profile {value!r} (known: {', '.join(sorted(PROFILES))})")
        return value

    @field_validator("export_tax_accounts")
    @classmethod
    def _tax_accounts(cls, value: str | None) -> str | None:
        if value is not None and not [a for a in value.split(",") if a.strip()]:
            raise ValueError("give comma-separated account codes or names, e.g. '1190,仮払消費税'")
        return value

    @model_validator(mode="after")
    def _export_profile_can_be_written(self) -> Settings:
        """The profile with its overrides must be able to write a file: checked at start-up."""
        from ledgerflow.export.profiles import PROFILES

        base = PROFILES[self.export_profile]
        encoding = self.export_encoding or base.encoding
        try:
            self.profile()
        except BadInput as exc:
            if "byte-order mark" not in str(exc):
                raise ValueError(
                    f"LEDGERFLOW_EXPORT_ENCODING={encoding} ({base.name} profile): {exc}"
                ) from None
            default = " (the default)" if self.export_bom is None else ""
            raise ValueError(
                f"LEDGERFLOW_EXPORT_ENCODING={encoding} with LEDGERFLOW_EXPORT_BOM=true{default}: {exc}; "
                f"set LEDGERFLOW_EXPORT_BOM=false"
            ) from None
        return self

    def profile(self) -> Profile:
        """The export profile with the LEDGERFLOW_EXPORT_* overrides applied."""
        from ledgerflow.export.profiles import get_profile

        return get_profile(
            self.export_profile,
            bom=self.export_bom,
            date_style=self.export_date_style,
            encoding=self.export_encoding,
            formula_guard=self.export_formula_guard,
            tax_accounts=self.tax_accounts(),
        )

    def tax_accounts(self) -> list[str] | None:
        if self.export_tax_accounts is None:
            return None
        return [a.strip() for a in self.export_tax_accounts.split(",") if a.strip()]

    @field_validator("alert_webhook_url", "smtp_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parsed = urlparse(value)
        if not parsed.scheme or not parsed.hostname:
            raise ValueError(f"malformed URL {value!r}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = Path(os.environ.get(ENV_PREFIX + "CONFIG", "ledgerflow.toml"))
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an HTTP header and a password field carry


def check_token(token: str) -> str:
    """A bearer token: at least 16 visible ASCII characters (no spaces)."""
    if not token:
        raise ValueError(f"is empty (use at least {MIN_TOKEN_LENGTH} characters, or unset it)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH}")
    if not _TOKEN.fullmatch(token):
        raise ValueError("may only contain visible ASCII characters (no spaces)")
    return token


_HOST = re.compile(r"(\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])")


def parse_allowed_hosts(value: str) -> list[str]:
    """`a.example, *.example.org, 10.0.0.5, [::1]` -> lower-case host names (no ports); `*` allows any."""
    hosts = [h.strip().lower() for h in value.split(",") if h.strip()]
    if not hosts:
        raise ValueError("is empty (list host names separated by commas, or * for any)")
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name, IP address, [IPv6] or *.domain")
    return hosts


def check_account(value: str) -> str:
    """`CODE:Account name`, e.g. `5200:Meeting expenses`."""
    code, sep, name = value.partition(":")
    if not sep or not code.strip() or not name.strip():
        raise ValueError(f"account {value!r} must look like 'CODE:Account name'")
    return f"{code.strip()}:{name.strip()}"


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning the first validation problem into one clear `ConfigError`."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a rule across several variables names them itself
            raise ConfigError(message) from None
        raise ConfigError(f"{ENV_PREFIX}{str(first['loc'][0]).upper()}: {message}") from None
    except ValueError as exc:  # a malformed ledgerflow.toml
        raise ConfigError(f"ledgerflow.toml: {exc}") from None
