"""One run per MODEL_DIR: an exclusive lock held while a run trains or evaluates there.

The lock is `MODEL_DIR/.lock`, taken with `fcntl.flock`: the kernel releases
it when the holder exits, however it exits (a SIGKILLed run leaves no stale
lock on a local disk). The file records the holder's host, pid and start time,
so a second run refuses with one line naming them. Some network filesystems do
not honour flock across hosts; a cluster launcher normally prevents two jobs
on one MODEL_DIR there. A MODEL_DIR that cannot hold the lock (read-only, a
regular file, under a regular file) is `RunDirUnusableError`, one line, with
nothing written.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

LOCK_FILE = ".lock"


class RunDirLockedError(RuntimeError):
    """Another run holds MODEL_DIR; the message names its host and pid."""


class RunDirUnusableError(RuntimeError):
    """MODEL_DIR is not a directory this run can write (read-only, a regular file); the message says which."""


@contextlib.contextmanager
def exclusive(model_dir: str, name: str = "MODEL_DIR") -> Iterator[None]:
    """Holds MODEL_DIR's lock for the duration of the block; RunDirLockedError if another run has
    it, RunDirUnusableError if MODEL_DIR cannot be created or written. `name`: what the messages
    call the directory (a comparison grid locks its OUTPUT_DIR the same way)."""
    path = os.path.join(model_dir, LOCK_FILE)
    try:
        os.makedirs(model_dir, exist_ok=True)
        # an old .lock may still open for writing in a directory where nothing else can be written
        if not os.access(model_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "it is not writable", model_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirUnusableError(_unusable(model_dir, e, name)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLockedError(f"{name} {model_dir} is in use by another run ({_holder(path)}); "
                                    f"wait for it to finish, or use another {name}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(fd)  # releases the flock


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def _unusable(model_dir: str, error: OSError, name: str) -> str:
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        why = "it is a file, not a directory"
    else:
        where = f" ({error.filename})" if error.filename and error.filename != model_dir else ""
        why = f"{error.strerror or error}{where}"
    return f"{name} {model_dir} cannot be used: {why}; choose a writable directory for {name}"
