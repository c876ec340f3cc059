"""Where a sweep's files live: a local folder or an object store (`s3://bucket/prefix`,
`gs://bucket/prefix`), reached through one pyarrow filesystem, the one Ray Tune uses for trial
checkpoints. An object store needs no disk shared between hosts. S3's endpoint and credentials
come from the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), so MinIO and
other S3-compatible stores work; GCS's from Google's default credentials.

`Location` is the small part of pathlib the driver, `list`, `show` and `analyze` use, on either."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

__all__ = ["Location", "locate", "is_object_store", "OBJECT_SCHEMES", "StorageUnreachable",
           "failure", "clear_failure", "said", "unreachable"]

OBJECT_SCHEMES = ("s3", "gs", "gcs")  # what pyarrow.fs reaches without a mount


def is_object_store(uri: str | os.PathLike | None) -> bool:
    return isinstance(uri, str) and uri.split("://", 1)[0].lower() in OBJECT_SCHEMES \
        and "://" in uri


class StorageUnreachable(OSError):
    """An object store that does not answer or refuses (endpoint, credentials, bucket); `hint`
    says what to check."""
    hint = ("check the bucket and AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            "(gs://: GOOGLE_APPLICATION_CREDENTIALS)")


_FAILED: list[StorageUnreachable] = []  # this process's first failure: the driver stops on it


def failure() -> StorageUnreachable | None:
    """The first object-store request of this process that failed (after pyarrow's retries),
    since clear_failure(): a driver ends the sweep on it rather than meet every later request
    timing out too (until then, later requests fail at once with it). Some callers cannot pass
    an error on (Optuna's tell only warns)."""
    return _FAILED[0] if _FAILED else None


def clear_failure() -> None:
    _FAILED.clear()


def unreachable(e: BaseException, where: Location, doing: str) -> StorageUnreachable | None:
    """`e` as a StorageUnreachable naming `where` (recorded as this process's failure) if it is
    an object store's failed request: pyarrow's errors carry no errno, the local disk's do."""
    if isinstance(e, StorageUnreachable):
        return e
    if where.local or not isinstance(e, OSError) or isinstance(e, FileNotFoundError) \
            or e.errno is not None:
        return None
    # pyarrow's text names the key again, then the SDK's error, then curl's details
    why = re.sub(r"^When [^:]*: ", "", " ".join(str(e).split())).split("; Details")[0]
    err = StorageUnreachable(f"{doing} {where.uri} failed ({why[:160]})")
    _FAILED[:] = _FAILED or [err]
    return err


@contextlib.contextmanager
def said(where: Location, doing: str):
    """pyarrow's errors from an object store, as one line naming the URI and what to check (also
    around Tune's own requests to it)."""
    if _FAILED and not where.local:  # the driver is ending on it: no request waits out again
        raise _FAILED[0]
    try:
        yield
    except OSError as e:
        if (err := unreachable(e, where, doing)) is None or err is e:
            raise
        raise err from None


# A store that stops answering (a frozen server, a lost network) fails a request within about
# CONNECT_S, or REQUEST_S without a byte, times ATTEMPTS: the sweep then ends in one line, where
# pyarrow's URI defaults left a driver waiting minutes per request
CONNECT_S, REQUEST_S, ATTEMPTS = 5.0, 10.0, 3


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str, endpoint: str | None) -> pafs.FileSystem:
    """One per bucket and endpoint (S3: the bucket's region may take a request to find)."""
    if scheme != "s3":
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
        return fs
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kw = {}
    if endpoint:  # MinIO and other S3 APIs: the variable AWS's own tools read
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kw = {"endpoint_override": url.netloc + url.path.rstrip("/"), "scheme": url.scheme}
    return pafs.S3FileSystem(
        region=region or ("us-east-1" if endpoint else pafs.resolve_s3_region(bucket)),
        connect_timeout=CONNECT_S, request_timeout=REQUEST_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS), **kw)


@dataclass(frozen=True)
class Location:
    """A file or folder on a local disk or in an object store; `/` joins like pathlib."""
    fs: pafs.FileSystem
    path: str          # the filesystem's own path: /abs/dir locally, bucket/prefix in a store
    scheme: str = ""   # "" on the local disk

    # -- names -------------------------------------------------------------------------------
    @property
    def local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        return self.path if self.local else f"{self.scheme}://{self.path}"

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:  # open(), Path(), shutil on a local Location
        if not self.local:
            raise TypeError(f"{self.uri} is in an object store, not a local path")
        return self.path

    def __truediv__(self, name: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, str(name)), self.scheme)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        return Location(self.fs, posixpath.dirname(self.path.rstrip("/")), self.scheme)

    def with_suffix(self, suffix: str) -> Location:
        stem, _ = posixpath.splitext(self.path)
        return Location(self.fs, stem + suffix, self.scheme)

    # -- reading -----------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        with said(self, "reading"):
            return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def mtime(self) -> float:
        """Seconds since the epoch of the last write (object stores: to the second)."""
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(self.uri)
        return info.mtime.timestamp() if info.mtime is not None else 0.0

    def _get(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:  # pyarrow says "Path does not exist" in words, without an errno
            if "does not exist" in str(e) or "NoSuchKey" in str(e):
                raise FileNotFoundError(f"{self.uri}: no such file") from None
            raise

    def read_bytes(self) -> bytes:
        with said(self, "reading"):
            try:
                return self._get()
            except FileNotFoundError:
                raise
            except OSError as e:
                if self.local or "NETWORK_CONNECTION" in str(e):  # a store not answering
                    raise
                # the body cut off (an object removed while it was read, a dropped response):
                # a second read finds it whole, or gone
                return self._get()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def iterdir(self) -> list[Location]:
        if not self.is_dir():
            return []
        with said(self, "listing"):
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((Location(self.fs, i.path, self.scheme) for i in infos),
                      key=lambda loc: loc.path)

    def glob(self, pattern: str) -> list[Location]:
        """This folder's entries whose name matches `pattern` (fnmatch; not recursive)."""
        return [p for p in self.iterdir() if fnmatch.fnmatch(p.name, pattern)]

    # -- writing -----------------------------------------------------------------------------
    def mkdir(self) -> None:
        """Make the folder and its parents (an object store has none to make: only checked to
        be reachable, so a wrong bucket or credentials fail here, before anything runs)."""
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        else:
            self.parent._info()

    def write_bytes(self, data: bytes) -> None:
        """Atomic: a reader sees the old content or the new, never half (a local file is written
        beside and renamed; an object store's PUT replaces the object whole)."""
        if not self.local:
            with said(self, "writing"), self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return
        path = Path(self.path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # a full disk must not leave a half-written .tmp behind

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            with said(self, "deleting"):
                self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        except OSError:
            if not missing_ok or self.exists():
                raise

    def upload(self, folder: Path) -> None:
        """A local folder's files, copied under this location."""
        with said(self, "writing"):
            pafs.copy_files(str(folder), self.path, destination_filesystem=self.fs)


def locate(where: str | os.PathLike | Location) -> Location:
    """A local path (made absolute, `~` expanded) or an object-store URI as a Location."""
    if isinstance(where, Location):
        return where
    if not is_object_store(where):
        return Location(pafs.LocalFileSystem(), str(Path(where).expanduser().resolve()))
    scheme, rest = str(where).split("://", 1)
    scheme = scheme.lower()
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ValueError(f"an object-store URI must name a bucket ({scheme}://BUCKET/prefix), "
                         f"but got {where!r}")
    fs = _filesystem(scheme, bucket, os.environ.get("AWS_ENDPOINT_URL") if scheme == "s3" else None)
    return Location(fs, rest.rstrip("/"), "gs" if scheme == "gcs" else scheme)
