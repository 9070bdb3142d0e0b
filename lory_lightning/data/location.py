"""Where a prepared folder lives: a local path or any fsspec URL (s3://, gs://, https://, file://).

A prepared folder is input from elsewhere. Every file of it is addressed as the folder's own
location plus one plain name (``member``), and the names a manifest lists must be plain, so a
tampered manifest can neither run a command (webdataset's ``pipe:``), reach another host or
scheme, nor read outside the folder (``..``). Remote files are read through fsspec (s3fs / gcsfs
for s3:// and gs://, aiohttp for http(s):// which lightning already installs).
"""

from __future__ import annotations

import re
from pathlib import Path

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # no "/", no ":", no leading "." (so no "..")


def is_url(folder: str | Path) -> bool:
    """True for ``scheme://...`` locations, False for local paths."""
    return bool(_SCHEME.match(str(folder)))


def check_folder(folder: str | Path) -> str:
    """The folder as a location string; a command (``pipe:``) is refused: data are files, not programs."""
    text = str(folder)
    if text.startswith("pipe:"):
        raise ValueError(f"data_dir {text!r}: 'pipe:' locations run a shell command and are refused; "
                         "give a local folder or a URL (s3://, gs://, https://, file://)")
    return text.rstrip("/") if is_url(text) else text


def member(folder: str | Path, name: str) -> str:
    """The location of file ``name`` inside ``folder`` (a plain name only: see the module docstring)."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name):
        raise ValueError(f"{name!r} is not a plain file name (letters, digits, '.', '_', '-'; no path, "
                         f"scheme or leading '.'): refused as a file of {folder}")
    folder = check_folder(folder)
    return f"{folder}/{name}" if is_url(folder) else str(Path(folder) / name)


def _remote_error(url: str, err: BaseException) -> OSError:
    return OSError(f"{url}: cannot be read ({type(err).__name__}: {err}); check the address, that the "
                   "server is reachable from this machine, and your credentials")


def _not_found(location: str, err: FileNotFoundError) -> OSError:
    # fsspec's HTTP store reports a refused connection as FileNotFoundError, with the cause attached
    cause = err.__cause__ or err.__context__
    if cause is not None and not isinstance(cause, FileNotFoundError) and getattr(cause, "status", None) not in (404, 410):
        return _remote_error(location, cause)
    return FileNotFoundError(f"{location}: no such file")


def read_bytes(location: str) -> bytes:
    """The whole content of a local file or URL; a missing one is FileNotFoundError naming it."""
    if not is_url(location):
        return Path(location).read_bytes()
    import fsspec

    try:
        with fsspec.open(location, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise _not_found(location, err) from err
    except ImportError as err:  # e.g. s3:// without s3fs: fsspec's message names the package
        raise ImportError(f"{location}: {err}") from err
    except Exception as err:  # aiohttp / botocore errors are not OSErrors: name the URL either way
        raise _remote_error(location, err) from err


def sha256_of(location: str) -> str:
    """sha256 of a local file's or a URL's content, streamed in 1 MB blocks."""
    import hashlib

    h = hashlib.sha256()
    if is_url(location):
        import fsspec

        opened = fsspec.open(location, "rb")
    else:
        opened = open(location, "rb")
    with opened as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


