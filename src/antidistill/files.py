"""Private files and directories: what holds prompts, completions, payment fingerprints or key material is
readable by its owner only, whatever the process's umask.

* A directory we create (the data directory, the SQLite file's directory) is made mode 0700.
* An existing directory is left as it is: ``ANTIDISTILL_DATA_DIR`` may name a directory its operator shares on
  purpose, or one like ``$HOME``. When the data directory lets other users in, :func:`check_private_dir` logs a
  warning with the ``chmod`` that closes it; the files in it are protected by their own modes anyway.
* A file we own (the SQLite database, its ``-wal``/``-shm``/``-journal`` files, the key ring) is created mode
  0600, and tightened to 0600 when found looser (files of earlier versions were created 0644), with a warning.
  SQLite creates ``-wal``, ``-shm`` and ``-journal`` with the mode of the database file, so creating that file
  0600 before SQLite opens it covers the files SQLite creates later; no umask is changed (a umask is process-wide,
  and the gateway opens connections in several threads).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
#: what SQLite creates next to a database file, with the database file's mode
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

_warned: set[str] = set()


def _warn_once(path: Path, message: str, *args: object) -> None:
    key = f"{message}:{path}"
    if key not in _warned:  # once per path and process: Store.open runs many times in one CLI or test run
        _warned.add(key)
        log.warning(message, *args)


def private_dir(path: Path) -> Path:
    """Create the directory ``path`` (and missing parents) with mode 0700; an existing one is left as it is.

    Parents we create get the default mode: the leaf's mode already keeps others out of everything below it.
    """
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made by another process in between: its creator chose its mode
            return path
        # mkdir's mode passes through the umask, which could only have removed bits; chmod sets it exactly.
        os.chmod(path, DIR_MODE)
    return path


def check_private_dir(path: Path) -> bool:
    """Warn (once per process) when other users may enter or list the existing directory ``path``.

    Returns:
        False when the directory exists and is open to others, else True.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True
    if stat.S_ISDIR(mode) and mode & 0o077:
        _warn_once(
            path,
            "the data directory %s is open to other users (mode %03o); the database and key files in "
            "it are private, but to keep everything else in it private too run: chmod 700 %s",
            path,
            stat.S_IMODE(mode),
            path,
        )
        return False
    return True


def tighten_file(path: Path) -> bool:
    """Set an existing file's mode to 0600 if others could read or write it; a warning says so.

    Returns:
        True when the mode was changed.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not stat.S_ISREG(mode) or not mode & 0o077:
        return False
    try:
        os.chmod(path, FILE_MODE)
    except OSError as exc:
        _warn_once(
            path,
            "%s is readable by other users (mode %03o) and could not be made private (%s); run: chmod 600 %s",
            path,
            stat.S_IMODE(mode),
            type(exc).__name__,
            path,
        )
        return False
    _warn_once(path, "%s was readable by other users (mode %03o); its mode is now 600", path, stat.S_IMODE(mode))
    return True


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist, else tighten it (:func:`tighten_file`)."""
    path = Path(path)
    try:
        # O_EXCL: never truncate or re-mode a file another process has just created
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        tighten_file(path)
        return path
    os.close(fd)
    return path


def private_sqlite_files(database: Path) -> None:
    """Make a SQLite database private before SQLite opens it: directory 0700 if created, file 0600 (created
    empty if missing, which SQLite reads as an empty database), existing side files tightened."""
    database = Path(database)
    private_dir(database.parent)
    private_file(database)
    for suffix in SQLITE_SIDE_FILES:
        tighten_file(database.with_name(database.name + suffix))
