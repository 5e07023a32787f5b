"""Files that must never be half written, and the checks before writing them: every record, report
and checkpoint goes through atomic_write (temporary file, fsync, rename); every script checks its
output paths with check_writable before any work; a record that cannot be read is a one-line error
that names the file. No torch here: report.py reads records without it."""
import json
import os
import tempfile


def atomic_write(path, write):
    """Write `path` through write(f) to a temporary file beside it, flush and fsync it, then rename it
    over `path`: a process killed at any moment leaves the old file or the new one, never half of one.
    The temporary name has the pid, so two processes never write into each other's file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path, obj):
    """A record (JSON), written atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def write_text(path, text):
    """A text file (a report, the README), written atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def check_writable(path, what="out_dir", is_dir=True):
    """That `path` (a folder, or a file's folder) can be created and written, checked before any work:
    a one-line error where not."""
    folder = path if is_dir else (os.path.dirname(os.path.abspath(path)))
    if not is_dir and os.path.isdir(path):
        raise SystemExit(f"error: {what}={path} is a folder, not a file")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"error: {what}={path} cannot be written ({e.strerror or e}); choose another")


def load_record(path):
    """One JSON record; a damaged one (truncated, say, by a full disk or a killed copy) is a one-line
    error that names it and says what to do."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path} is not a readable record ({type(e).__name__}: {e}); delete it and run "
                         "ablate.py again, which trains that run again") from None
