"""The one reader and writer of run directories: atomic files, a writer lock, strict-JSON records that a full disk
cannot tear, and the records of a run (merged ``samples.jsonl`` plus per-rank shards).

* :func:`write_json` / :func:`write_text`: temp file + fsync + rename; on any failure (a full disk) the temp file is
  removed and the previous file is untouched.
* :class:`RunLock`: ``.lock`` in the run directory, held with ``flock`` for the whole run (released by the kernel if
  the process dies, so a killed run never leaves a stale lock); a second writer is refused naming the holder.
* :func:`append_records`: one batch of lines appended, flushed and fsynced; if the write fails the file is cut back
  to its previous length, so it never ends in a torn line.
* :func:`read_jsonl`: a torn last line (no final newline: a kill mid-write) is dropped; a corrupt line elsewhere is
  refused with its line number, and dropped only when asked (``drop_corrupt``), kept aside in ``<file>.dropped``.
  Every reader of ``samples.jsonl`` (the runner resuming, ``hallufix report``, ``hallufix score``) goes through
  :func:`read_records`, so all of them agree on a torn last line: it is not a finished sample.
* Shards: under ``torchrun`` every rank appends to ``shards/samples.<rank>.jsonl``; :func:`read_records` reads the
  merged file and every shard, :func:`merge_shards` writes them back in task order into ``samples.jsonl``.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from hallufix.errors import RunDirError

SAMPLES, LOCK, SHARDS = "samples.jsonl", ".lock", "shards"


# ---------------------------------------------------------------------------------------------------- strict JSON
def strict(obj: Any, path: str = "", bad: list[str] | None = None) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (its dotted path appended to ``bad``), tensors and
    other objects as ``str`` — so ``json.dumps(..., allow_nan=False)`` always succeeds."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if bad is not None:
            bad.append(path or "value")
        return None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): strict(v, f"{path}.{k}" if path else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v, f"{path}[{i}]", bad) for i, v in enumerate(obj)]
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return strict(tolist(), path, bad)
    return str(obj)


def dumps(obj: Any, **kw) -> str:
    """Strict JSON (no bare ``NaN``); see :func:`strict`."""
    return json.dumps(strict(obj), allow_nan=False, **kw)


# ---------------------------------------------------------------------------------------------------- atomic files
def write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (temp + fsync + rename); never leaves a partial or 0-byte file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text(path, dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------- lock
class RunLock:
    """Exclusive writer lock on a run directory (``flock`` on ``DIR/.lock``); a context manager.

    The lock file holds the holder's pid, host and start time for the refusal message. Raises
    :class:`~hallufix.errors.RunDirError` when another process (or another run in this one) holds it."""

    def __init__(self, out_dir: Path, name: str = LOCK):
        self.out_dir, self.path, self._fd = Path(out_dir), Path(out_dir) / name, None

    def acquire(self) -> "RunLock":
        import fcntl
        import socket

        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"{self.out_dir} is being written by another hallufix run ({holder}) — wait for it to "
                              f"finish, or choose another --output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_unlocked(out_dir: Path) -> None:
    """Refuse now (before a model loads) if another writer holds ``out_dir``. Takes and drops a *shared* lock, so
    the ranks of one ``torchrun`` launch checking the same directory at once never refuse each other."""
    import fcntl

    path = Path(out_dir) / LOCK
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
        raise RunDirError(f"{out_dir} is being written by another hallufix run ({holder}) — wait for it to "
                          f"finish, or choose another --output") from None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- records
def read_jsonl(path: Path, *, drop_corrupt: bool = False, what: str = "record", keep_aside: bool = True
               ) -> list[dict]:
    """Finished lines of a (possibly interrupted) JSONL file; see the module docstring for torn / corrupt lines.
    ``keep_aside``: append dropped lines to ``<file>.dropped``."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records, dropped = [], []
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            records.append(rec)
        except (ValueError, UnicodeDecodeError) as exc:
            if i == last and not raw.endswith(b"\n"):
                break  # torn write of the last record: it is redone
            if drop_corrupt:
                dropped.append(line)
                continue
            raise RunDirError(
                f"{path}:{i + 1}: corrupt {what} ({type(exc).__name__}: {str(exc)[:80]}) — rerun with "
                f"--drop-corrupt-lines to drop only that line and redo its sample ({len(lines) - 1} other lines "
                f"are kept)") from None
    if dropped and keep_aside:
        with open(path.with_name(path.name + ".dropped"), "ab") as f:
            f.write(b"\n".join(dropped) + b"\n")
    return records


def holds_exactly(path: Path, n: int) -> bool:
    """Whether ``path`` is ``n`` complete non-empty lines and nothing else (no torn tail, no dropped line)."""
    raw = Path(path).read_bytes() if Path(path).is_file() else b""
    return (not raw or raw.endswith(b"\n")) and sum(1 for ln in raw.split(b"\n") if ln.strip()) == n


def rewrite_jsonl(path: Path, records: list[dict]) -> None:
    """Atomically replace ``path`` with ``records`` (one strict-JSON line each)."""
    write_text(path, "".join(dumps(r) + "\n" for r in records))


def append_records(f, records: list[dict]) -> None:
    """Append ``records`` to the file ``f`` (opened ``"ab"``) as strict-JSON lines, written with ``os.write`` and
    fsynced. If the write fails (disk full) the file is cut back to its previous length, so it never ends in a torn
    line; the error propagates, naming the file. (Python's buffered writer cannot be rolled back: a failed flush
    keeps its buffer and fails again on every seek, so the bytes go through the file descriptor directly.)"""
    data = "".join(dumps(r) + "\n" for r in records).encode("utf-8")
    f.flush()  # nothing of ours is buffered; whatever is, goes first
    fd = f.fileno()
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException as exc:  # a full disk, or Ctrl-C between two writes
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, getattr(f, "name", None)) from None
        raise


def cut_torn_tail(path: Path) -> None:
    """Cut a torn last line (no final newline, from a kill mid-write) so that the next append starts a new line."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        raw = f.read()
        if raw and not raw.endswith(b"\n"):
            f.truncate(raw.rfind(b"\n") + 1)


# ---------------------------------------------------------------------------------------------------- directory
def shard_path(out_dir: Path, rank: int, stem: str = "samples") -> Path:
    """``DIR/shards/<stem>.<rank>.jsonl``: what rank ``rank`` of a multi-process run appends to."""
    return Path(out_dir) / SHARDS / f"{stem}.{rank}.jsonl"


def shard_files(out_dir: Path, stem: str = "samples") -> list[Path]:
    """Every rank's shard of ``stem`` in ``out_dir`` (from this launch or an earlier one, any number of ranks)."""
    d = Path(out_dir) / SHARDS
    return sorted(d.glob(f"{stem}.*.jsonl")) if d.is_dir() else []


def read_records(out_dir: Path, *, drop_corrupt: bool = False, keep_aside: bool = True) -> dict[str, dict]:
    """``{id: record}``: the finished records of a run directory — ``samples.jsonl`` and every rank's shard, a
    repeated id's last record winning (a shard is newer than the merged file). A torn last line of any file is not
    a finished record (:func:`read_jsonl`). This is the only reader of a run's samples."""
    out: dict[str, dict] = {}
    for path in [Path(out_dir) / SAMPLES, *shard_files(out_dir)]:
        for r in read_jsonl(path, drop_corrupt=drop_corrupt, keep_aside=keep_aside):
            if "id" in r:
                out[str(r["id"])] = r
    return out


def merge_shards(out_dir: Path, ids: list[str], records: dict[str, dict]) -> None:
    """Write ``records`` of ``ids`` (task order) as ``samples.jsonl`` (atomically; untouched when it already holds
    exactly them), then remove the sample shards. A crash in between leaves records twice, never lost: the next
    read keeps one of each."""
    path = Path(out_dir) / SAMPLES
    clean = [records[i] for i in ids if i in records]
    if read_jsonl(path, drop_corrupt=True, keep_aside=False) != clean or not holds_exactly(path, len(clean)):
        rewrite_jsonl(path, clean)
    for shard in shard_files(out_dir):
        shard.unlink()


def remove_empty_run(out_dir: Path) -> None:
    """Undo a fresh run directory in which nothing finished (only the files a run writes; never anything else)."""
    for name in ("config.yaml", "env.json", SAMPLES, "timing.jsonl", LOCK, "config.yaml.tmp", "env.json.tmp"):
        try:
            (out_dir / name).unlink()
        except OSError:
            pass
    shards = Path(out_dir) / SHARDS
    for path in [*Path(out_dir).glob(LOCK + ".*"), *(shards.glob("*") if shards.is_dir() else [])]:
        if path.name.startswith(LOCK) or path.stat().st_size == 0:
            path.unlink()
    for d in (Path(out_dir) / SHARDS, Path(out_dir)):
        try:
            d.rmdir()
        except OSError:
            pass


def config_diff(previous: dict, config: dict) -> str:
    """``"key: old -> new, ..."`` for the top-level keys where two run configs differ (first four)."""
    keys = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
    return ", ".join(f"{k}: {previous.get(k)!r} -> {config.get(k)!r}" for k in keys[:4])[:300]
