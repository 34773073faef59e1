"""The gallery's store (facenet_cli/store/gallery.py `Gallery`, face_index.py): names, read-only galleries,
SQLite errors by class, the file made by the first face, damaged `info` rows, the search index
bound to the gallery's own writes, and face ids on the command line. Real LFW faces, real SQLite,
real (tmpfs) file systems, a real PostgreSQL: each test that takes `gallery`, `galleries` or
`gallery_location` runs on both stores; the others are about the SQLite file itself (each says why)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from facenet_cli.store.registry import open_store
from tests.conftest import fill_disk
from tests.helpers import copy_people, error_line

PEOPLE = {"Colin_Powell": 3, "Tony_Blair": 3, "Serena_Williams": 2}


@pytest.fixture(scope="module")
def known(lfw_images, tmp_path_factory) -> Path:
    return copy_people(lfw_images, tmp_path_factory.mktemp("known") / "known", PEOPLE)


@pytest.fixture(scope="module")
def enrolled(known, tmp_path_factory) -> Path:
    """The people enrolled once (one network run), in a SQLite file: the others are copies of it."""
    from facenet_cli.recognition.enrol import add_to_gallery

    path = tmp_path_factory.mktemp("gallery") / "people.gallery"
    assert add_to_gallery(path, [known]).counts()["added"] == sum(PEOPLE.values())
    return path


@pytest.fixture
def gallery(enrolled, galleries) -> str:
    """A fresh copy of the enrolled gallery, in each store in turn (`gallery copy`: nothing embedded again)."""
    return galleries.copy_of(enrolled, "people")


@pytest.fixture
def gallery_file(enrolled, tmp_path) -> Path:
    """A fresh copy of the enrolled gallery file, for the tests of the SQLite file itself."""
    path = tmp_path / "people.gallery"
    shutil.copy(enrolled, path)
    return path


def error_after_progress(stderr: str) -> str:
    """The one `Error: ...` line of a command that failed after its progress bar started; no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def photo_of(known: Path, person: str, n: int = 0) -> Path:
    return sorted((known / person).iterdir())[n]


def people_of(location) -> dict[str, int]:
    with open_store(location) as g:
        return dict(g.people())


def sql(location, statement: str, *args) -> list[tuple]:
    """One statement on the gallery's own tables, under the store (`?` placeholders), as damage
    or another program would: the SQLite file, or the PostgreSQL gallery's schema."""
    location = str(location)
    if "://" not in location:
        db = sqlite3.connect(location, isolation_level=None)
        try:
            return db.execute(statement, args).fetchall()
        finally:
            db.close()
    import psycopg

    base, schema = location.rsplit("gallery=", 1)
    with psycopg.connect(base.rstrip("?&"), autocommit=True) as db:
        db.execute(f"SET search_path TO {schema}")
        cursor = db.execute(statement.replace("?", "%s"), args)
        return cursor.fetchall() if cursor.description else []


def set_info(location, key: str, value: str | None) -> None:
    sql(location, "DELETE FROM info WHERE key = ?", key)
    if value is not None:
        sql(location, "INSERT INTO info(key, value) VALUES (?, ?)", key, value)


# ------------------------------------------------------------------ 1. names


@pytest.mark.parametrize("name", ["Ada\n", "\nAda", "Ada\r", "Ada\u2028", "\u200bAda", "A\u0007da", "Ada\u2029 B"])
def test_control_characters_anywhere_in_a_name_are_refused(known, galleries, run_cli, name):
    """A line break at either end used to be stripped away silently (the name enrolled as `Ada`)."""
    from facenet_cli.store.names import name_problem

    assert name_problem(name) and "control character" in name_problem(name)
    location = galleries.new("g")
    result = run_cli("gallery", "add", location, "--name", name, photo_of(known, "Colin_Powell"))
    assert result.exit_code == 2
    assert "control character" in error_line(result.stderr)
    assert galleries.holds_nothing(location)


def test_a_person_folder_with_a_line_break_is_a_bad_name_outcome(known, galleries, tmp_path, run_cli):
    folder = tmp_path / "known"
    shutil.copytree(known / "Tony_Blair", folder / "Tony_Blair")
    shutil.copytree(known / "Colin_Powell", folder / "Colin_Powell\n")
    location = galleries.new("g")
    result = run_cli("gallery", "add", location, folder, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"]["bad-name"] == PEOPLE["Colin_Powell"] and report["counts"]["added"] == PEOPLE["Tony_Blair"]
    assert people_of(location) == {"Tony_Blair": PEOPLE["Tony_Blair"]}


@pytest.mark.parametrize("name, fragment", [
    ("\uff55\uff4e\uff4b\uff4e\uff4f\uff57\uff4e", "unknown"),  # fullwidth "unknown"
    ("\uff35\uff2e\uff2b\uff2e\uff2f\uff37\uff2e", "unknown"),  # fullwidth "UNKNOWN"
    ("a\uff0fb", "slash"),                                        # fullwidth solidus
    ("\u2025", "'..'"),                                          # two dot leader: NFKC ".."
])
def test_names_are_checked_in_nfkc(known, galleries, run_cli, name, fragment):
    from facenet_cli.errors import UsageError
    from facenet_cli.store.names import normalise_name

    with pytest.raises(UsageError, match=fragment):
        normalise_name(name)
    location = galleries.new("g")
    result = run_cli("gallery", "add", location, "--name", name, photo_of(known, "Colin_Powell"))
    assert result.exit_code == 2 and fragment in error_line(result.stderr)
    assert galleries.holds_nothing(location)


def test_names_are_stored_in_nfkc_and_found_in_any_form(known, gallery_location, run_cli):
    from facenet_cli.store.names import normalise_name

    assert normalise_name(" \uff27\uff52\uff41\uff43\uff45 ") == "Grace"
    assert normalise_name("Jose\u0301") == "Jos\u00e9"
    path = gallery_location  # a SQLite file, then a PostgreSQL gallery
    added = run_cli("gallery", "add", path, "--name", "\uff27\uff52\uff41\uff43\uff45 Hopper",
                    photo_of(known, "Serena_Williams"), "--json")
    assert added.exit_code == 0, added.stderr
    with open_store(path) as g:
        assert dict(g.people()) == {"Grace Hopper": 1}
        assert len(g.faces("\uff27race Hopper")) == 1  # any compatible spelling finds her
    removed = run_cli("gallery", "remove", path, "\uff27race Hopper", "--json")
    assert removed.exit_code == 0, removed.stderr
    assert json.loads(removed.stdout)["removed_faces"] == 1


# ------------------------------------------------------------------ 2. read-only galleries


def remount_read_only(point: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only here ({done.stderr.strip()})")


def check_reads_work_and_writes_say_read_only(path: Path, known: Path, tmp_path: Path, run_cli) -> None:
    listed = run_cli("gallery", "list", path, "--with-faces", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert {p["name"]: p["faces"] for p in json.loads(listed.stdout)["people"]} == PEOPLE
    query = photo_of(known, "Tony_Blair", 1)
    for index in ("never", "always"):  # the index cannot be saved beside it: built in memory
        named = run_cli("identify", path, query, "--json", "--index", index)
        assert named.exit_code == 0, named.stderr
        assert json.loads(named.stdout)["faces"][0]["name"] == "Tony_Blair"
    searched = run_cli("search", path, query, "--json", "--index", "always", "--top", "1")
    assert searched.exit_code == 0, searched.stderr
    assert json.loads(searched.stdout)["faces"][0]["matches"][0]["person"] == "Tony_Blair"
    out = tmp_path / "exported"
    exported = run_cli("gallery", "export", path, out)
    assert exported.exit_code == 0, exported.stderr
    assert (out / "reps.csv").read_text().count("\n") == sum(PEOPLE.values())
    for args in (("add", path, "--name", "X", photo_of(known, "Serena_Williams", 1)),
                 ("add", path, known),
                 ("remove", path, "Tony_Blair"), ("remove", path, "1"), ("move", path, "1", "Someone")):
        result = run_cli("gallery", *args)
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        assert "read-only" in error_after_progress(result.stderr), args


# SQLite only: a file on a read-only file system; PostgreSQL's read-only galleries are roles
# (test_a_read_only_role_is_read_and_not_written below).
def test_a_gallery_in_a_read_only_folder_is_read_and_not_written(enrolled, known, small_disk, tmp_path, run_cli):
    disk = small_disk(2048)
    path = disk / "people.gallery"
    shutil.copy(enrolled, path)
    remount_read_only(disk)
    check_reads_work_and_writes_say_read_only(path, known, tmp_path, run_cli)
    assert sorted(os.listdir(disk)) == ["people.gallery"]
    assert people_of(path) == PEOPLE


def test_a_read_only_gallery_file_in_a_writable_folder(gallery_file, known, tmp_path, run_cli):
    """SQLite only: the file's own permission (a read-only bind mount)."""
    gallery = gallery_file
    done = subprocess.run(["mount", "--bind", str(gallery), str(gallery)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({done.stderr.strip()})")
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(gallery)]).returncode == 0
        assert not os.access(gallery, os.W_OK)
        check_reads_work_and_writes_say_read_only(gallery, known, tmp_path, run_cli)
    finally:
        subprocess.run(["umount", "-l", str(gallery)], capture_output=True)
    assert people_of(gallery) == PEOPLE


def test_a_new_gallery_in_a_read_only_folder_is_refused_before_any_work(known, small_disk, run_cli):
    """SQLite only: the folder a new file would go in."""
    disk = small_disk(64)
    remount_read_only(disk)
    result = run_cli("gallery", "add", disk / "new.gallery", known)
    assert result.exit_code == 1 and "read-only" in error_line(result.stderr)


def test_a_read_only_role_is_read_and_not_written(enrolled, known, postgres_url, tmp_path, run_cli):
    """PostgreSQL only (a role with SELECT alone): every read command works, every write is one
    sentence that says read-only, and nothing changed."""
    from tests.gallery_stores import Galleries, read_only_url

    location = Galleries("postgres", tmp_path, postgres_url).copy_of(enrolled)
    check_reads_work_and_writes_say_read_only(read_only_url(postgres_url, location), known, tmp_path, run_cli)
    assert people_of(location) == PEOPLE


# ------------------------------------------------------------------ 3. SQLite errors by class


def test_full_disk_during_add_is_one_sentence_and_keeps_what_landed(enrolled, lfw_images, small_disk, tmp_path,
                                                                     run_cli):
    """SQLite only (the file system under the file fills up). Used to say "could not be write
    (cannot rollback - no transaction is active)"."""
    more = copy_people(lfw_images, tmp_path / "more", {"George_W_Bush": 60, "Colin_Powell": 40})
    # A new gallery on a disk that fills up after its first batches.
    disk = small_disk(160)
    result = run_cli("gallery", "add", disk / "new.gallery", more, "--batch-size", "8")
    assert result.exit_code == 1
    line = error_after_progress(result.stderr)
    assert "disk is full" in line and "rollback" not in line, line
    # An existing gallery on a full disk.
    disk = small_disk(1024)
    shutil.copy(enrolled, disk / "people.gallery")
    fill_disk(disk)
    result = run_cli("gallery", "add", disk / "people.gallery", more, "--batch-size", "8")
    assert result.exit_code == 1
    line = error_after_progress(result.stderr)
    assert "disk is full" in line and "rollback" not in line, line
    os.unlink(disk / ".filler")
    assert people_of(disk / "people.gallery") == PEOPLE  # nothing lost, nothing half-written


def sqlite_error(fn) -> sqlite3.Error:
    try:
        fn()
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no sqlite error")


def test_every_sqlite_error_class_has_its_sentence_by_code(tmp_path):
    """SQLite only (its error codes). Real SQLite errors of each class are told apart by their code, not their text."""
    from facenet_cli.errors import DataError, DiskFull, FacenetError, WriteError
    from facenet_cli.store.sqlite_errors import translate_errors

    def translated(exc: sqlite3.Error) -> FacenetError:
        with pytest.raises(FacenetError) as caught:
            with translate_errors(tmp_path / "g.gallery", "read"):
                raise exc
        assert "\n" not in str(caught.value) and str(caught.value).endswith(".")
        return caught.value

    # busy: another connection holds the write lock
    db = tmp_path / "busy.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    busy = sqlite_error(lambda: other.execute("BEGIN IMMEDIATE"))
    holder.execute("ROLLBACK")
    assert "locked by another program" in str(translated(busy))
    # not a database
    (tmp_path / "junk.db").write_bytes(b"x" * 4096)
    notadb = sqlite_error(lambda: sqlite3.connect(tmp_path / "junk.db").execute("SELECT * FROM sqlite_master"))
    assert isinstance(translated(notadb), DataError) and "damaged" in str(translated(notadb))
    # read-only
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    readonly = sqlite_error(lambda: ro.execute("INSERT INTO t VALUES (1)"))
    assert isinstance(translated(readonly), WriteError) and "read-only" in str(translated(readonly))
    # cannot open: the folder is not there
    cantopen = sqlite_error(lambda: sqlite3.connect(tmp_path / "no" / "such" / "x.db").execute("SELECT 1"))
    assert "Cannot open" in str(translated(cantopen))
    # full: a database that may not grow
    full_db = sqlite3.connect(":memory:")
    full_db.execute("CREATE TABLE t (x)")
    full_db.execute(f"PRAGMA max_page_count = {full_db.execute('PRAGMA page_count').fetchone()[0]}")
    full = sqlite_error(lambda: full_db.execute("INSERT INTO t VALUES (zeroblob(100000))"))
    assert full.sqlite_errorname == "SQLITE_FULL"
    assert isinstance(translated(full), DiskFull) and "disk is full" in str(translated(full))
    # The same message text under another code is not mistaken for it: the code decides.
    for exc in (busy, notadb, readonly, full):
        impostor = sqlite3.OperationalError(str(exc))
        impostor.sqlite_errorcode, impostor.sqlite_errorname = 1, "SQLITE_ERROR"
        assert type(translated(impostor)) is DataError and "could not be read" in str(translated(impostor))
    # an I/O error
    ioerr = sqlite3.OperationalError("disk I/O error")
    ioerr.sqlite_errorcode, ioerr.sqlite_errorname = 10 | (4 << 8), "SQLITE_IOERR_READ"
    assert "input/output error" in str(translated(ioerr))


def test_a_truncated_gallery_is_one_sentence(gallery_file, known, run_cli):
    """SQLite only: a damaged file."""
    gallery = gallery_file
    data = gallery.read_bytes()
    gallery.write_bytes(data[:len(data) // 2])
    for args in (("gallery", "list", gallery, "--with-faces"), ("identify", gallery, photo_of(known, "Tony_Blair"))):
        result = run_cli(*args)
        assert result.exit_code in (1, 2)
        line = error_line(result.stderr)
        assert "damaged" in line or "not a readable gallery" in line or "image" in line, line


# ------------------------------------------------------------------ 4. the file appears with its first face


def test_a_failed_first_add_leaves_no_gallery_file(known, examples_dir, lfw_images, galleries, tmp_path, run_cli):
    """On PostgreSQL, no faces and no model: its schema is made when first opened for writing."""
    from PIL import Image

    folder = tmp_path / "faceless" / "Nobody"
    folder.mkdir(parents=True)
    with Image.open(lfw_images / "Colin_Powell" / "Colin_Powell_0001.jpg") as image:
        image.crop((0, 0, 60, 60)).resize((240, 240)).save(folder / "wall.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    path = galleries.new("sub/new") if galleries.is_sqlite else galleries.new()
    failed = run_cli("gallery", "add", path, folder.parent)
    assert failed.exit_code == 3  # nothing found: no face could be added
    missing_input = run_cli("gallery", "add", path, tmp_path / "nope")
    assert missing_input.exit_code == 2
    several = run_cli("gallery", "add", path, "--name", "Eva", examples_dir / "longoria-cooper.jpg")
    assert several.exit_code == 3
    assert galleries.holds_nothing(path)
    if galleries.is_sqlite:
        folder = Path(path).parent
        assert not folder.exists() or list(folder.iterdir()) == []  # no temporary file left either
        listed = run_cli("gallery", "list", path)
        assert listed.exit_code == 2 and "No gallery at" in error_line(listed.stderr)
    # The next add is the first: it binds the model it is given, not one a failed run left.
    added = run_cli("gallery", "add", path, "--name", "Colin_Powell", photo_of(known, "Colin_Powell"), "--no-flip")
    assert added.exit_code == 0, added.stderr
    assert people_of(path) == {"Colin_Powell": 1}
    with open_store(path) as g:
        assert g.model.flip is False
    if not galleries.is_sqlite:
        return
    path = Path(path)
    with sqlite3.connect(path) as db:  # the file itself: WAL, sound, nothing left beside it
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_a_new_gallery_is_not_made_by_opening_it(galleries):
    """Opened for writing, a new gallery is empty and bound to no model; no file is made (SQLite)."""
    path = galleries.new("new")
    with open_store(path, create=True) as g:
        assert g.model is None and len(g) == 0 and g.people() == [] and g.faces() == []
    assert galleries.holds_nothing(path)


# ------------------------------------------------------------------ 5. damaged info rows


def test_a_non_numeric_version_is_one_sentence_everywhere(gallery, known, tmp_path, run_cli):
    set_info(gallery, "version", "one")
    for args in (("gallery", "export", gallery, tmp_path / "out"),
                 ("identify", gallery, photo_of(known, "Tony_Blair")),
                 ("gallery", "add", gallery, "--name", "X", photo_of(known, "Tony_Blair", 2)),
                 ("gallery", "remove", gallery, "Tony_Blair"), ("search", gallery, photo_of(known, "Tony_Blair"))):
        result = run_cli(*args)
        assert result.exit_code == 1, (args, result.stderr)
        line = error_line(result.stderr)
        assert "version" in line and "gallery list" in line, args
    # The advice works: the faces and their sources are listed.
    listed = run_cli("gallery", "list", gallery, "--with-faces", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert json.loads(listed.stdout)["total_faces"] == sum(PEOPLE.values())


@pytest.mark.parametrize("damage", ["{not json", '{"name": "dlib-resnet.v1"}', "[]"])
def test_a_damaged_model_record_gives_advice_that_works(gallery, galleries, known, tmp_path, run_cli, damage):
    set_info(gallery, "model", damage)
    query = photo_of(known, "Tony_Blair", 1)
    for args in (("identify", gallery, query), ("search", gallery, query),
                 ("gallery", "add", gallery, "--name", "X", photo_of(known, "Tony_Blair", 2)),
                 ("gallery", "export", gallery, tmp_path / "out")):
        result = run_cli(*args)
        assert result.exit_code == 1, (args, result.stderr)
        line = error_line(result.stderr)
        assert "model record" in line and "damaged" in line, line
        assert "gallery export" not in line  # the old advice, refused with this same sentence
        assert "gallery list" in line
    # The advice: list the faces' sources, then build a new gallery from those photos.
    listed = run_cli("gallery", "list", gallery, "--with-faces", "--json")
    assert listed.exit_code == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["total_faces"] == sum(PEOPLE.values()) and data["model"] is None
    assert all(Path(f["source"]).is_file() for f in data["faces"])
    rebuilt = run_cli("gallery", "add", galleries.new("rebuilt"), *[f["source"] for f in data["faces"]][:1],
                      "--name", data["faces"][0]["person"])
    assert rebuilt.exit_code == 0, rebuilt.stderr


def test_a_deleted_model_record_is_refused_not_taken_for_an_empty_gallery(gallery, known, run_cli):
    set_info(gallery, "model", None)
    named = run_cli("identify", gallery, photo_of(known, "Tony_Blair", 1))
    assert named.exit_code == 1
    line = error_line(named.stderr)
    assert "model record" in line and "missing" in line and "no faces yet" not in line, line
    added = run_cli("gallery", "add", gallery, "--name", "X", photo_of(known, "Tony_Blair", 2))
    assert added.exit_code == 1 and "missing" in error_line(added.stderr)
    # Nothing was bound silently.
    assert sql(gallery, "SELECT count(*) FROM info WHERE key = 'model'") == [(0,)]
    assert sql(gallery, "SELECT count(*) FROM faces") == [(sum(PEOPLE.values()),)]


# ------------------------------------------------------------------ 6. the search index of a diverged copy


def test_an_index_from_a_diverged_copy_is_rebuilt(gallery_file, lfw_images, tmp_path, engine, face_pipeline):
    """SQLite only: the faiss index file beside the gallery (PostgreSQL's index is in the database)."""
    from facenet_cli import Gallery
    from facenet_cli.store.face_index import index_path
    from facenet_cli.recognition.enrol import add_to_gallery
    from facenet_cli.recognition.gallery_admin import remove_from_gallery
    from facenet_cli.recognition.identify import search_gallery

    gallery = gallery_file
    aligner, embedder = engine
    query = sorted((lfw_images / "Tony_Blair").iterdir())[5]  # not in the gallery
    other = sorted((lfw_images / "Serena_Williams").iterdir())[5]

    def search(path, use_index):
        return search_gallery(path, query, pipeline=face_pipeline, use_index=use_index, top=8)

    assert search(gallery, "always").search == "index (built)"
    copy = tmp_path / "copy" / "people.gallery"
    copy.parent.mkdir()
    shutil.copy(gallery, copy)
    shutil.copy(index_path(gallery), index_path(copy))
    assert search(copy, "always").search == "index (used)"  # an exact copy: its index is right
    with Gallery(gallery) as g:
        blair = [f.id for f in g.faces("Tony_Blair")]
        serena = [f.id for f in g.faces("Serena_Williams")]
    # The original loses one of Blair's faces and gains a photo; the copy loses one of Serena's and
    # gains the query photo: same id, generation, number of faces and largest face id on both sides.
    remove_from_gallery(gallery, str(blair[0]))
    assert add_to_gallery(gallery, [other], name="Serena_Again").counts()["added"] == 1
    remove_from_gallery(copy, str(serena[0]))
    assert add_to_gallery(copy, [query], name="Blair_Query").counts()["added"] == 1
    with Gallery(gallery) as a, Gallery(copy) as b:
        sa, sb = a.state(), b.state()
    assert (sa.gallery_id, sa.generation, sa.faces, sa.max_face_id) == (sb.gallery_id, sb.generation, sb.faces,
                                                                        sb.max_face_id)
    shutil.copy(index_path(gallery), index_path(copy))  # the other copy's index
    got = search(copy, "always")
    assert got.search == "index (rebuilt)", got.search
    exact = search(copy, "never")
    assert [m.face_id for m in got.faces[0].matches] == [m.face_id for m in exact.faces[0].matches]
    assert got.faces[0].matches[0].person == "Blair_Query" and got.faces[0].matches[0].distance < 1e-4
    assert search(copy, "always").search == "index (used)"


# ------------------------------------------------------------------ 7. face ids


def test_parse_face_id():
    from facenet_cli.store.names import parse_face_id

    assert parse_face_id("12") == 12 and parse_face_id("0") == 0 and parse_face_id(" 7 ") == 7
    for text in ("\u0661\u0662", "\uff11\uff12", "+1", "-1", "1_000", "1.0", "", " ", "0x10", "\u00b2", "12a"):
        assert parse_face_id(text) is None, text
    assert parse_face_id("99999999999999999999999") == 99999999999999999999999  # a face id no face has
    assert parse_face_id("9" * 5000) is None or parse_face_id("9" * 5000) > 2 ** 63


def test_face_ids_out_of_range_are_not_found_and_other_digits_are_refused(gallery, run_cli):
    huge = "99999999999999999999999"
    for args in (("remove", gallery, huge), ("move", gallery, huge, "Someone"),
                 ("remove", gallery, str(2 ** 63)), ("move", gallery, str(2 ** 63), "X"),
                 ("remove", gallery, "9" * 5000)):
        result = run_cli("gallery", *args)
        assert result.exit_code == 2, (args[:2], result.stderr[-300:])
        line = error_line(result.stderr)
        assert "No face with id" in line or "No one called" in line, line
    assert f"No face with id {huge} " in error_line(run_cli("gallery", "remove", gallery, huge).stderr)
    # Arabic-Indic "3" is not face 3: it is looked up as a name (no one), and move refuses it.
    removed = run_cli("gallery", "remove", gallery, "\u0663")
    assert removed.exit_code == 2 and "No one called" in error_line(removed.stderr)
    moved = run_cli("gallery", "move", gallery, "\u0663", "Someone")
    assert moved.exit_code == 2 and "not a face id" in error_line(moved.stderr)
    moved = run_cli("gallery", "move", gallery, "+3", "Someone")
    assert moved.exit_code == 2 and "not a face id" in error_line(moved.stderr)
    assert people_of(gallery) == PEOPLE
    # ... while plain ids still work.
    assert run_cli("gallery", "move", gallery, "3", "Someone").exit_code == 0


def test_two_new_galleries_racing_for_one_path_both_land(galleries, tmp_path):
    """The first commit links its file into place (SQLite; PostgreSQL makes its schema at open); a
    second run that finds the gallery made adds its faces to it (checked against its model), never
    replacing it."""
    import numpy as np

    from facenet_cli import resolve_model
    from facenet_cli.errors import SpecMismatch

    record = resolve_model("dlib-resnet.v1")
    rng = np.random.default_rng(0)

    def rows(person, n, salt):
        vectors = rng.normal(size=(n, record.embedding_dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return [(person, v, f"{person}/{i}.jpg", f"{salt}{i:063d}", None) for i, v in enumerate(vectors)]

    path = galleries.new("race")
    first, second, third = (open_store(path, create=True) for _ in range(3))
    try:
        first.bind(record, "dlib-resnet.v1", True)
        second.bind(record, "dlib-resnet.v1", True)
        third.bind(record, "dlib-resnet.v1", False)  # the same weights without the mirror average
        assert galleries.holds_nothing(path)
        ids_one = first.add_faces(rows("Ada", 2, "a"))
        assert not galleries.holds_nothing(path) and ids_one == [1, 2]
        ids_two = second.add_faces(rows("Grace", 3, "b"))
        assert ids_two == [3, 4, 5]
        with pytest.raises(SpecMismatch, match="mirror"):
            third.add_faces(rows("Alan", 1, "c"))
    finally:
        for g in (first, second, third):
            g.close()
    assert people_of(path) == {"Ada": 2, "Grace": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == (["race.gallery"] if galleries.is_sqlite else [])
