"""Backups off the machine: a folder, S3 (moto's server) and Google Drive (the fake server).

What is at the destination is read through each service's own API, not through ledgerflow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.backup import create_backup
from ledgerflow.db.tables import journal_entries
from tests.backup.conftest import count, entry


@dataclass
class Remote:
    """One destination and a look at it through the service itself."""

    url: str
    env: dict[str, str]
    kind: str
    handle: Any

    @property
    def settings(self) -> dict[str, str]:
        return {k.removeprefix("LEDGERFLOW_").lower(): v for k, v in self.env.items()}

    def files(self) -> dict[str, bytes]:
        """name → content of everything at the destination."""
        if self.kind == "file":
            return {p.name: p.read_bytes() for p in Path(self.handle).iterdir()}
        if self.kind == "s3":
            client, bucket = self.handle
            listed = client.list_objects_v2(Bucket=bucket, Prefix="backups/").get("Contents", [])
            return {
                o["Key"].removeprefix("backups/"): client.get_object(Bucket=bucket, Key=o["Key"])[
                    "Body"
                ].read()
                for o in listed
            }
        names = [f["name"] for f in self.handle.in_folder("BACKUPS")]
        assert len(names) == len(set(names)), f"two Drive files with one name: {names}"
        return {f["name"]: f["content"] for f in self.handle.in_folder("BACKUPS")}

    def service_sha256(self, name: str) -> str:
        """The checksum the service keeps for a file (for a folder: the file's own)."""
        if self.kind == "file":
            return hashlib.sha256((Path(self.handle) / name).read_bytes()).hexdigest()
        if self.kind == "s3":
            client, bucket = self.handle
            head = client.head_object(Bucket=bucket, Key=f"backups/{name}", ChecksumMode="ENABLED")
            return base64.b64decode(head["ChecksumSHA256"]).hex()
        [found] = [f for f in self.handle.in_folder("BACKUPS") if f["name"] == name]
        return hashlib.sha256(found["content"]).hexdigest()  # what the fake reports as sha256Checksum

    def damage(self, name: str) -> None:
        if self.kind == "file":
            (Path(self.handle) / name).write_bytes(b"damaged")
        elif self.kind == "s3":
            client, bucket = self.handle
            client.put_object(Bucket=bucket, Key=f"backups/{name}", Body=b"damaged")
        else:
            [found] = [f for f in self.handle.in_folder("BACKUPS") if f["name"] == name]
            found["content"] = b"damaged"


@pytest.fixture(params=["file", "s3", "gdrive"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    if request.param == "file":
        folder = tmp_path / "offsite"
        return Remote(
            f"file://{folder}", {"LEDGERFLOW_BACKUP_DESTINATION": f"file://{folder}"}, "file", folder
        )
    if request.param == "s3":
        endpoint, client, bucket = request.getfixturevalue("moto_s3")
        env = {
            "LEDGERFLOW_BACKUP_DESTINATION": f"s3://{bucket}/backups",
            "LEDGERFLOW_S3_ENDPOINT_URL": endpoint,
        }
        return Remote(env["LEDGERFLOW_BACKUP_DESTINATION"], env, "s3", (client, bucket))
    drive = request.getfixturevalue("fake_drive")
    env = {"LEDGERFLOW_BACKUP_DESTINATION": "gdrive://BACKUPS", "LEDGERFLOW_GDRIVE_ENDPOINT": drive.url}
    return Remote(env["LEDGERFLOW_BACKUP_DESTINATION"], env, "gdrive", drive)


def test_backups_go_off_the_machine_checked_by_the_service_rotated_there_and_restore_from_there(
    books_app, cli, remote, tmp_path, other_db_url
):
    theirs = books_app(database_url=other_db_url, **remote.settings)
    theirs_backup = create_backup(theirs, keep=5).name  # another database's backup at the destination
    app = books_app(**remote.settings)
    app.ledger.record(entry("OFF-1"))
    made = []
    for _ in range(3):
        code, out, err = cli("backup", "create", "--keep", "2", "--json", env=remote.env)
        assert code == 0, err
        made.append(json.loads(out))

    there = remote.files()
    newest = [b["name"] for b in made[-2:]]
    assert sorted(there) == sorted(
        [theirs_backup, f"{theirs_backup}.json"] + newest + [f"{n}.json" for n in newest]
    ), "rotated to the 2 newest of this database; the other database's backup is untouched"
    for backup in made[-2:]:
        assert remote.service_sha256(backup["name"]) == backup["sha256"]
        assert json.loads(there[f"{backup['name']}.json"])["sha256"] == backup["sha256"]

    code, out, _ = cli("backup", "list", "--remote", "--json", env=remote.env)
    assert code == 0 and [b["name"] for b in json.loads(out)] == newest[::-1]

    shutil.rmtree(tmp_path / "backups")  # the machine is lost: only the destination is left
    app.ledger.record(entry("OFF-2"))
    code, out, err = cli("backup", "restore", newest[-1], "--force", env=remote.env)
    assert code == 0 and f"restored {newest[-1]}" in out, err
    app.db.dispose()
    assert count(app, journal_entries) == 1
    assert (tmp_path / "backups" / newest[-1]).is_file(), "fetched into the backup folder"


def test_an_upload_killed_half_way_is_finished_by_the_next_backup_without_a_second_copy(
    books_app, cli, cli_process, remote
):
    books_app(**remote.settings).ledger.record(entry("HALF-1"))
    killed = cli_process(
        "backup", "create", env={**remote.env, "LEDGERFLOW_BACKUP_CRASH_AT": "between_upload_and_manifest"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [half] = remote.files()  # the file made it, its manifest did not: not a backup yet
    code, out, err = cli("backup", "create", "--json", env=remote.env)
    assert code == 0, err
    assert sorted(remote.files()) == sorted(
        [half, f"{half}.json", json.loads(out)["name"], f"{json.loads(out)['name']}.json"]
    )


def test_a_damaged_copy_at_the_destination_is_refused(books_app, cli, remote, tmp_path):
    books_app(**remote.settings).ledger.record(entry("DMG-1"))
    code, out, err = cli("backup", "create", "--json", env=remote.env)
    assert code == 0, err
    name = json.loads(out)["name"]
    shutil.rmtree(tmp_path / "backups")
    remote.damage(name)
    code, _, err = cli("backup", "restore", name, env=remote.env)
    assert code == 2 and "is damaged" in err and len(err.strip().splitlines()) == 1


def test_a_failed_upload_keeps_the_verified_local_backup_and_the_next_create_catches_up(
    books_app, cli, fake_drive, tmp_path
):
    env = {"LEDGERFLOW_BACKUP_DESTINATION": "gdrive://BACKUPS", "LEDGERFLOW_GDRIVE_ENDPOINT": fake_drive.url}
    books_app().ledger.record(entry("DOWN-1"))
    fake_drive.fail_mode = "500"
    code, _, err = cli("backup", "create", env=env)
    assert code == 1 and "is verified and kept in" in err and "the next `backup create` uploads it" in err
    [local] = [p.name for p in (tmp_path / "backups").iterdir() if not p.name.endswith(".json")]
    fake_drive.fail_mode = None
    code, out, err = cli("backup", "create", "--json", env=env)
    assert code == 0, err
    names = sorted(f["name"] for f in fake_drive.in_folder("BACKUPS"))
    newest = json.loads(out)["name"]
    assert names == sorted([local, f"{local}.json", newest, f"{newest}.json"])


def test_an_unusable_backup_destination_stops_create_before_anything_is_made(cli, tmp_path):
    code, out, err = cli("backup", "create", env={"LEDGERFLOW_BACKUP_DESTINATION": "ftp://elsewhere"})
    assert code == 2 and "LEDGERFLOW_BACKUP_DESTINATION" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "backups").exists()
