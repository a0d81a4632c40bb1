"""The backup folder: forged manifests, other databases' backups, `--keep 0`, damaged files."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ledgerflow.backup import create_backup, list_backups
from ledgerflow.backup.folder import NAME_RE, database_identity, is_backup_name, parse_manifest
from tests.backup.conftest import entry

FUTURE = "ledgerflow-29991231T235959_999999-ffff"


def _forge(folder: Path, manifest_name: str, like: dict, **fields) -> None:
    (folder / manifest_name).write_text(json.dumps({**like, **fields}))


def test_forged_manifests_never_delete_outside_the_folder_nor_the_new_backup(books_app, cli, tmp_path):
    app = books_app()
    folder = tmp_path / "backups"
    first = create_backup(app)
    like = json.loads((folder / f"{first.name}.json").read_text())
    victims = [tmp_path / "victim.txt", tmp_path / "absolute-victim.txt"]
    for victim in victims:
        victim.write_text("not a backup")
    suffix = first.name.split(".", 1)[1]
    # every way a manifest can lie about the file it describes
    _forge(folder, "ledgerflow-evil.json", like, name="../victim.txt")
    _forge(folder, f"{FUTURE}.{suffix}.json", like, name=str(victims[1]))
    _forge(folder, "ledgerflow-zzz.json", like, name="ledgerflow-zzz")  # sorts after every real name
    (folder / f"{FUTURE}.{suffix}").write_bytes(b"x" * like["bytes"])  # a newer-looking "backup"
    _forge(folder, f"{FUTURE}.{suffix}.json", like, name=f"{FUTURE}.{suffix}")

    code, out, err = cli("backup", "create", "--keep", "1", "--json")

    assert code == 0, err
    made = json.loads(out)["name"]
    assert all(v.read_text() == "not a backup" for v in victims), "nothing outside the folder is touched"
    assert (folder / made).is_file() and (folder / f"{made}.json").is_file(), (
        "the new backup is never deleted"
    )
    names = [b.name for b in list_backups(folder)]
    assert made in names and first.name not in names  # rotation did its job on real backups
    assert all(is_backup_name(n) for n in names)
    assert (folder / "ledgerflow-evil.json").exists(), (
        "a manifest that is not a backup is ignored, not deleted"
    )


def test_rotation_keeps_to_this_databases_backups(books_app, tmp_path, other_db_url):
    ours, theirs = books_app(), books_app(database_url=other_db_url)
    folder = tmp_path / "backups"
    kept = [create_backup(theirs, keep=5).name for _ in range(2)]
    made = [create_backup(ours, keep=1).name for _ in range(3)]
    assert [b.name for b in list_backups(folder, database_identity(ours.db.url))] == made[-1:]
    assert [b.name for b in list_backups(folder, database_identity(theirs.db.url))] == kept[::-1]
    assert all((folder / n).is_file() for n in kept)


def test_keep_zero_is_refused_before_any_backup_is_made(cli, tmp_path):
    code, out, err = cli("backup", "create", "--keep", "0")
    assert (
        code == 2
        and out == ""
        and err.strip().splitlines()
        == ["error: --keep must be at least 1 (got 0): the newest backup is always kept"]
    )
    folder = tmp_path / "backups"
    assert not folder.exists() or not any(folder.iterdir()), "nothing was made, not even a temp folder"


def test_list_never_shows_a_truncated_or_altered_file_as_verified(books_app, cli, tmp_path):
    app = books_app()
    app.ledger.record(entry("L-1"))
    folder = tmp_path / "backups"
    truncated, altered, good = (create_backup(app) for _ in range(3))
    data = (folder / truncated.name).read_bytes()
    (folder / truncated.name).write_bytes(data[: len(data) // 2])
    data = bytearray((folder / altered.name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / altered.name).write_bytes(bytes(data))

    code, out, _ = cli("backup", "list", "--json")
    listed = {b["name"]: b["problem"] for b in json.loads(out)}
    assert code == 0
    assert listed[truncated.name] == f"file has {len(data) // 2:,} of {truncated.bytes:,} bytes"
    assert listed[good.name] is None
    code, out, _ = cli("backup", "list", "--check", "--json")
    listed = {b["name"]: b["problem"] for b in json.loads(out)}
    assert listed[altered.name] == "sha256 differs from the manifest" and listed[good.name] is None

    code, out, _ = cli("backup", "list")
    assert code == 0 and "file has" in out  # in the "verified" column, instead of a time
    code, _, err = cli("backup", "restore", truncated.name)
    assert code == 2 and "damaged" in err


NAMES = st.one_of(st.from_regex(NAME_RE, fullmatch=True), st.text(min_size=1, max_size=60))


@given(NAMES, st.data())
def test_a_manifest_describes_only_the_plain_backup_name_it_is_named_after(file_name, data):
    claimed = data.draw(
        st.one_of(st.just(file_name), NAMES, st.just(f"../{file_name}"), st.just(f"/{file_name}"))
    )
    document = json.dumps(
        {
            "name": claimed,
            "backend": "sqlite",
            "created_at": "2026-11-30T00:00:00+00:00",
            "bytes": 1,
            "sha256": "0" * 64,
            "revision": None,
            "rows": {},
            "verified_at": None,
        }
    )
    parsed = parse_manifest(f"{file_name}.json", document)
    if parsed is not None:
        assert parsed.name == claimed == file_name and is_backup_name(claimed)
        assert "/" not in claimed and not claimed.startswith(".")
