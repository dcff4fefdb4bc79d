"""Resumable HTTP(S) downloads with a checksum check (standard library only).

``download(url, dest, md5=..., sha256=...)`` writes to ``dest + ".part"``;
if such a partial file exists it asks the server for the rest with a
``Range: bytes=<k>-`` header (a server that ignores the header and answers
200 makes it start again from byte 0).  Once the body is complete the
checksum is verified and the file is moved to ``dest`` with ``os.replace``.
So ``dest`` exists only when it is complete and correct:

- connection dropped mid-way -> :class:`UserError` ("run again to resume"),
  the ``.part`` file is kept for the next call;
- wrong checksum -> :class:`UserError`, the ``.part`` file is deleted.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request

from hfmeta.errors import UserError

CHUNK_BYTES = 1 << 16
USER_AGENT = "hfmeta-data/1 (+https://pypi.org/project/hfmeta)"


def file_digest(path, algorithm="sha256"):
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path, md5=None, sha256=None, label=None):
    """Raise :class:`UserError` unless ``path`` has the given md5 / sha256."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            raise UserError(f"{label or os.path.basename(path)}: {algorithm} checksum mismatch "
                            f"(expected {expected}, got {actual})")


def download(url, dest, md5=None, sha256=None, progress=None, timeout=30.0):
    """Fetch ``url`` to ``dest`` (resuming a partial ``dest.part``); return ``dest``.

    ``progress(done_bytes, total_bytes_or_None)`` is called as data arrives.
    """
    dest = os.fspath(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:           # nothing left to fetch: the part may be whole
            return _finish(part, dest, md5, sha256)
        raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"download of {url} failed: {reason}") from None

    with response:
        start = _resume_offset(response, have)
        total = _total_length(response, start)
        mode = "ab" if start else "wb"
        done = start
        try:
            with open(part, mode) as out:       # "wb" restarts a part the server refused to resume
                while True:
                    block = response.read(CHUNK_BYTES)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except (OSError, http.client.HTTPException) as e:
            raise UserError(f"download of {url} interrupted after {done} of "
                            f"{total if total is not None else '?'} bytes "
                            f"({type(e).__name__}); run the command again to resume") from None
    if total is not None and done != total:
        raise UserError(f"download of {url} incomplete: {done} of {total} bytes; "
                        f"run the command again to resume")
    return _finish(part, dest, md5, sha256)


def download_first(urls, dest, md5=None, sha256=None, progress=None, timeout=30.0):
    """Try mirrors in order; the first one that works wins."""
    errors = []
    for url in urls:
        try:
            return download(url, dest, md5=md5, sha256=sha256, progress=progress,
                            timeout=timeout)
        except UserError as e:
            if "checksum" in str(e):
                raise
            errors.append(str(e))
    raise UserError("; ".join(errors) if errors else "no download URL given")


def _resume_offset(response, have):
    """Where the body starts: ``have`` for a 206 answer, 0 if the server restarted."""
    if response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != have:
        raise UserError(f"server answered a resume request with an unexpected range "
                        f"{response.headers.get('Content-Range')!r}")
    return have


def _total_length(response, start):
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def _finish(part, dest, md5, sha256):
    try:
        verify_checksum(part, md5=md5, sha256=sha256,
                        label=f"downloaded {os.path.basename(dest)}")
    except UserError:
        os.remove(part)
        raise
    os.replace(part, dest)
    return dest
