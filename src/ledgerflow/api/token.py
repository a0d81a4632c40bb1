"""The API token: `LEDGERFLOW_API_TOKEN`, else one made on first start and kept in a 0600 file.

There is no unauthenticated mode: whoever serves the API gets a token from here. The file is
created atomically (written to a private temporary file, then hard-linked into place), so two
processes starting at once end up with the same token.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ledgerflow.config import Settings, check_token
from ledgerflow.errors import ConfigError


@dataclass(frozen=True)
class ApiToken:
    """The token in force and where it came from (`file` is None when it came from the environment)."""

    value: str
    file: Path | None
    created: bool = False


def token_file(settings: Settings) -> Path:
    """`LEDGERFLOW_API_TOKEN_FILE`, else `<SQLite file>.token`, else `./ledgerflow.token`."""
    if settings.api_token_file:
        return Path(settings.api_token_file)
    url = settings.database_url
    if url.startswith("sqlite:///") and url.removeprefix("sqlite:///") not in ("", ":memory:"):
        database = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        return database.with_name(database.name + ".token")
    return Path("ledgerflow.token")


def api_token(settings: Settings, *, create: bool = True) -> ApiToken | None:
    """The configured token, else the kept one, else (with `create`) a new random one kept for next time."""
    if settings.api_token is not None:
        return ApiToken(settings.api_token.get_secret_value(), None)
    path = token_file(settings)
    if path.exists():
        return ApiToken(_read(path), path)
    if not create:
        return None
    created = _create(path)
    return ApiToken(_read(path), path, created)


def _read(path: Path) -> str:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: the API token file is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{path}: the API token file is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run: chmod 600 {path}"
            )
        token = path.read_text("ascii").strip()
        check_token(token)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the API token file ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: the API token {exc}") from None
    return token


def _create(path: Path) -> bool:
    """Write a new random token to `path` unless another process got there first (then False)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".token-", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.link(temporary, path)  # fails if the file exists: the first writer wins
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the API token file {path} ({exc.strerror}): set LEDGERFLOW_API_TOKEN "
            "or LEDGERFLOW_API_TOKEN_FILE"
        ) from None
    return True
