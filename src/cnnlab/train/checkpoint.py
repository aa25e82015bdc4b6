"""Checkpoints: plain data written atomically, read with `torch.load(weights_only=True)`.

A checkpoint holds only tensors, dicts, lists, strings and numbers: the model's registered
name and options (the model is rebuilt with `create_model`, never unpickled), its state_dict,
the class names and input normalisation, and for resuming the optimizer state, the step and
the small state of the loop. Loading never runs code from the file.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
old file (`os.replace` is atomic on POSIX and Windows): a crash at any moment leaves either
the old checkpoint or the new one, never half of one, and no temporary file behind.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["FORMAT", "CheckpointError", "atomic_write", "load_checkpoint", "save_checkpoint"]

FORMAT = "cnnlab-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not cnnlab's, or of another model.

    A ValueError: bad input the user can fix, reported by the command line as one line.
    """


def atomic_write(
    path: str | Path,
    write: Callable[[IO[bytes]], None],
    check: Callable[[Path], None] | None = None,
) -> None:
    """Call `write(file)` on a temporary file next to `path`, then rename it to `path`.

    `check(temporary_path)`, when given, runs on the complete, closed temporary file before the
    rename: what it raises stops the write (cnnlab export runs the exported network there).
    On any error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the mode open() would
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (plain data and tensors) atomically as a cnnlab checkpoint."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, model: str | None = None) -> dict[str, Any]:
    """Read a cnnlab checkpoint onto the CPU.

    Args:
        path: the checkpoint file, or a run folder (its `checkpoint.pt` is read).
        model: when given, the model the caller expects; another model's checkpoint is refused.

    Raises:
        CheckpointError: the file is missing, unreadable or corrupt, holds pickled objects
            (not plain data), is not a cnnlab checkpoint, or is of another model.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class or function to import: code, refused
            raise CheckpointError(
                f"{path} holds pickled Python objects, not plain data; cnnlab loads checkpoints "
                "with weights_only=True and does not run code from files"
            ) from None
        raise CheckpointError(f"{path} is corrupt or truncated ({_first_line(e)})") from None
    except Exception as e:  # a damaged file can fail anywhere in the unpickler (IndexError...)
        raise CheckpointError(f"{path} is corrupt or truncated ({_first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a cnnlab checkpoint (a bare state_dict or another tool's file?); "
            "cnnlab writes checkpoints with `cnnlab train`"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {state.get('version')} checkpoint; "
            f"this cnnlab reads version {VERSION}"
        )
    if model is not None and state["model"] != model:
        raise CheckpointError(
            f"{path} is a checkpoint of {state['model']}, not {model}; "
            "resume with the same model or choose another --out folder"
        )
    return state


def _first_line(e: BaseException) -> str:
    # torch's own first line when it is short and to the point ("PytorchStreamReader failed
    # reading zip archive: failed finding central directory"), else the exception's type.
    lines = str(e).strip().splitlines()
    if lines and len(lines[0]) <= 100 and "weights_only" not in lines[0].lower():
        return lines[0]
    return type(e).__name__
