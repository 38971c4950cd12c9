"""Content-addressed artifact store: keys, atomic writes, manifests, verify, runs and gc. No Prefect.

The file formats written inside an artifact (safetensors, zarr, parquet, PNG) are in :mod:`tasks.formats`.

This is the only module that turns (stage, key) into a path. Layout under the root (a local directory,
or any fsspec URL such as ``memory://x`` or ``s3://bucket/prefix``)::

    <stage>/<key>/<files...>            one artifact (local roots)
    <stage>/<key>/<upload>/<files...>   one artifact (remote roots: each writer uploads under its own
                                        prefix, so two concurrent writers can never mix their files)
    <stage>/<key>/manifest.json         written last: its presence is the commit marker
    runs/<run_id>.json                  which artifacts a run reached, in order (gc roots)
    .staging/                           in-progress writes (local roots); each entry holds a flock

Why it is built this way:

- Paths come only from validated stage names (``^[a-z][a-z0-9_]{0,31}$``), hex keys, run ids and
  ASCII file names; concept names and prompts never become path components (issue 9, item 1).
- A local write fills a staging directory inside the root and ``rename``s it into place in one step, with
  ``manifest.json`` already inside: readers see nothing or a complete artifact. When two writers race,
  the first rename wins and the loser's copy is discarded (a directory rename cannot replace a non-empty
  one).
- Every file's sha256 and size is in the manifest; the artifact digest is the sha256 of that list. Reads
  re-hash (cached per (path, inode, mtime, ctime, size) once a file is older than a couple of seconds, as
  git does against "racy" timestamps); ``verify()`` always re-hashes everything.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

__all__ = [
    "STORE_FORMAT_VERSION",
    "ArtifactCorrupt",
    "ArtifactRef",
    "ArtifactStore",
    "Problem",
    "StoreError",
    "artifact_key",
    "canonical_json",
    "check_key",
    "check_run_id",
    "check_stage",
    "is_safe_file_name",
    "json_value",
    "remove_entry",
    "show_value",
]

STORE_FORMAT_VERSION = "1"

_STAGE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KEY_RE = re.compile(r"[0-9a-f]{64}")
_RUN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # one component of a file path in an artifact
_UPLOAD_RE = re.compile(r"u([0-9]{1,12})-[0-9a-f]{12}")  # remote upload prefix: u<unix time>-<random>
_RESERVED_STAGES = frozenset({"runs"})
_MANIFEST = "manifest.json"
_STAGING = ".staging"
_RUNS = "runs"
_CHUNK = 1 << 20
_RACY_NS = 2_000_000_000  # files modified less than this long ago are never served from the hash cache
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_PACKAGES = ("mace-erase", "torch", "numpy", "safetensors", "zarr", "pyarrow", "pillow", "fsspec",
             "pydantic", "diffusers", "transformers", "peft")


class StoreError(ValueError):
    """Bad store input (a name, key, URL) or an unusable store; the message names the problem and the fix."""


class ArtifactCorrupt(ValueError):
    """An artifact's bytes do not match its manifest (tampered, truncated, missing or extra files)."""


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`ArtifactStore.verify`: where (``path``), what (``kind``), and details."""

    path: str
    kind: str  # missing_file | size_mismatch | modified_file | extra_file | not_regular | bad_manifest |
    #            digest_mismatch | incomplete | unexpected | orphan_staging | orphan_upload | bad_run
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path} ({self.detail})"


# ------------------------------------------------------------------------------------------------------
# Names and keys
# ------------------------------------------------------------------------------------------------------


def show_value(value: object, limit: int = 60) -> str:
    """A one-line, escaped, bounded rendering of a (possibly hostile) value for error messages."""
    text = repr(value)  # escapes NUL, newlines and non-printable marks such as U+202E
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def check_stage(stage: object) -> str:
    """Return ``stage`` if it is a valid stage name, else raise :class:`StoreError`."""
    if not isinstance(stage, str) or not _STAGE_RE.fullmatch(stage) or stage in _RESERVED_STAGES:
        raise StoreError(
            f"invalid stage name {show_value(stage)}: use 1-32 characters of [a-z0-9_] starting with a letter "
            "(not 'runs'); stage names come from code, never from user input"
        )
    return stage


def check_key(key: object) -> str:
    """Return ``key`` if it is 64 lowercase hex characters (an :func:`artifact_key`), else raise."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise StoreError(
            f"invalid artifact key {show_value(key)}: expected 64 lowercase hex characters from artifact_key(); "
            "user strings never become keys"
        )
    return key


def check_run_id(run_id: object) -> str:
    """Return ``run_id`` if usable as a run manifest name (validate a run name before expensive work)."""
    if not isinstance(run_id, str) or not _RUN_RE.fullmatch(run_id):
        raise StoreError(
            f"invalid run id {show_value(run_id)}: use 1-128 characters of [A-Za-z0-9._-] starting with a letter "
            "or digit"
        )
    return run_id


def is_safe_file_name(name: object) -> bool:
    """True if ``name`` can be one component of a file path inside an artifact (ASCII, no dot-files)."""
    return isinstance(name, str) and _PART_RE.fullmatch(name) is not None


def _check_relpath(rel: str) -> bool:
    """True if ``rel`` is a safe relative file path inside an artifact (ASCII parts, no dot-files)."""
    return len(rel) <= 1024 and all(is_safe_file_name(part) for part in rel.split("/"))


def _check_inputs(inputs: object) -> dict[str, str]:
    if not isinstance(inputs, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()
    ):
        raise StoreError(
            f"inputs must map names to digests or artifact ids (str -> str), got {show_value(inputs)}; "
            "pass ref.digest or ref.id"
        )
    return dict(inputs)


def json_value(obj: Any, where: str = "value") -> Any:
    """``obj`` as plain JSON types; TypeError naming the location of a NaN/inf or an unknown type."""
    if isinstance(obj, BaseModel):
        _reject_nonfinite(obj.model_dump(mode="python"), where)  # JSON mode would turn NaN into null
        return json_value(obj.model_dump(mode="json"), where)
    if isinstance(obj, enum.Enum):
        return json_value(obj.value, where)
    if obj is None:
        return None
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise TypeError(f"canonical_json: {where} is {obj!r}; keys and manifests need finite numbers")
        return float(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"canonical_json: {where} has a non-str key {show_value(k)}; use str keys")
            out[k] = json_value(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [json_value(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = [json_value(v, f"{where}{{}}") for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    raise TypeError(
        f"canonical_json: cannot encode {type(obj).__name__} at {where}; pass str/int/float/bool/None, "
        "lists, str-keyed dicts, pydantic models, or a digest string instead"
    )


def _reject_nonfinite(obj: Any, where: str) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise TypeError(f"canonical_json: {where} contains {obj!r}; keys and manifests need finite numbers")
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _reject_nonfinite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _reject_nonfinite(v, where)


_SECRET_KEY_RE = re.compile(
    r"(?i)(.*[_-])?(api[_-]?key|secret|secret[_-]?key|password|passwd|auth[_-]?token|access[_-]?token|"
    r"credentials?|private[_-]?key)")


def _has_url_credentials(text: str) -> bool:
    """True if ``text`` holds a URL with ``user:password@`` (linear time, even for huge strings)."""
    start = 0
    while (i := text.find("://", start)) != -1:
        authority = re.match(r"[^/\s]{0,512}", text[i + 3:i + 3 + 512])
        userinfo, at, _ = authority.group(0).rpartition("@") if authority else ("", "", "")
        if at and ":" in userinfo:
            return True
        start = i + 3
    return False


def _reject_secrets(obj: Any, where: str) -> None:
    """StoreError if a JSON value has a secret-looking key with a non-empty value (issue 9, item 3).

    Manifests and run records are plain, shareable files; credentials belong in the environment or a
    Prefect Secret block, never in config sections written next to artifacts.
    """
    if isinstance(obj, dict):
        for k, v in obj.items():
            if _SECRET_KEY_RE.fullmatch(k) and v not in (None, "", False):
                raise StoreError(f"{where}.{k} looks like a secret and would be written to a manifest; "
                                 "read credentials from the environment or a Prefect Secret block instead")
            _reject_secrets(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _reject_secrets(v, f"{where}[{i}]")
    elif isinstance(obj, str) and _has_url_credentials(obj):
        raise StoreError(f"{where} is a URL with embedded credentials and would be written to a manifest; "
                         "pass credentials through the environment instead")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, ASCII; pydantic models, tuples and Paths normalised.

    Equal values give equal strings in every process, which is what makes keys reusable across runs and
    machines. NaN/inf and unknown types raise TypeError (a key must never depend on ``repr``).
    """
    return json.dumps(json_value(obj), sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=True)


def artifact_key(stage: str, version: str, config: Mapping[str, Any] | BaseModel | None,
                 inputs: Mapping[str, str]) -> str:
    """sha256 hex of the canonical JSON of (stage, stage version, config read, input digests, format).

    Equal key means the bytes may be reused anywhere; any change in any of these changes the key.
    """
    check_stage(stage)
    if not isinstance(version, str) or not version:
        raise StoreError(f"stage version must be a non-empty str, got {show_value(version)}; e.g. VERSION = '1'")
    payload = {"stage": stage, "version": version, "config": config, "inputs": _check_inputs(inputs),
               "format": STORE_FORMAT_VERSION}
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ArtifactRef:
    """A small, picklable pointer to a complete artifact: what tasks pass to each other instead of data."""

    stage: str
    key: str
    digest: str  # sha256 of the manifest's file list: the artifact's content hash

    def __post_init__(self) -> None:
        check_stage(self.stage)
        check_key(self.key)
        if not isinstance(self.digest, str) or not _KEY_RE.fullmatch(self.digest):
            raise StoreError(f"invalid artifact digest {show_value(self.digest)}: expected 64 lowercase hex chars")

    @property
    def id(self) -> str:
        """``"<stage>/<key>"``: how manifests' ``inputs`` and run manifests name an artifact."""
        return f"{self.stage}/{self.key}"


def _parse_id(value: str) -> tuple[str, str] | None:
    stage, sep, key = value.partition("/")
    if sep and _STAGE_RE.fullmatch(stage) and stage not in _RESERVED_STAGES and _KEY_RE.fullmatch(key):
        return stage, key
    return None


# ------------------------------------------------------------------------------------------------------
# Local file helpers
# ------------------------------------------------------------------------------------------------------


def _hash_file(path: str | os.PathLike[str], *, fsync: bool = False) -> tuple[str, int]:
    """(sha256 hex, size) of a file, streamed; optionally fsync it (durable before the publish rename)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            size += len(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest(), size


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk(base: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every non-directory entry below ``base`` (symlinks included, never followed), sorted."""
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            p = Path(dirpath, name)
            yield p.relative_to(base).as_posix(), p, os.lstat(p)


def _files_digest(files: Sequence[Mapping[str, Any]]) -> str:
    listing = sorted(({"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in files),
                     key=lambda f: f["path"])
    return hashlib.sha256(canonical_json(listing).encode("ascii")).hexdigest()


def _write_file_durable(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _seal(manifest: dict[str, Any]) -> bytes:
    """Serialise a manifest with ``seal`` = sha256 of its canonical JSON (so any edit is detected)."""
    body = {k: v for k, v in manifest.items() if k != "seal"}
    sealed = {**body, "seal": hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()}
    return json.dumps(sealed, indent=1, sort_keys=True).encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _redact(url: str) -> str:
    """The URL without credentials (``scheme://user:secret@host`` -> ``scheme://***@host``)."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


def _parse_manifest(raw: bytes, stage: str, key: str, *, remote: bool) -> dict[str, Any]:
    """The manifest dict, checked for shape and safe file names; ValueError (one line) if malformed."""
    m = json.loads(raw.decode("utf-8"))
    if not isinstance(m, dict):
        raise ValueError("manifest is not a JSON object")
    body = {k: v for k, v in m.items() if k != "seal"}
    try:
        sealed = hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest() == m.get("seal")
    except TypeError:
        sealed = False
    if not sealed:
        raise ValueError("manifest does not match its seal (edited after it was written)")
    if m.get("format") != STORE_FORMAT_VERSION:
        raise ValueError(f"manifest format {show_value(m.get('format'))}, this store reads {STORE_FORMAT_VERSION!r}")
    if m.get("stage") != stage or m.get("key") != key:
        raise ValueError(f"manifest names {show_value(m.get('stage'))}/{show_value(m.get('key'))}, not its location")
    files = m.get("files")
    if not isinstance(files, list):
        raise ValueError("manifest has no 'files' list")
    for f in files:
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and _check_relpath(f["path"])
                and f["path"] != _MANIFEST and isinstance(f.get("sha256"), str)
                and _KEY_RE.fullmatch(f["sha256"]) and type(f.get("size")) is int and f["size"] >= 0):
            raise ValueError(f"manifest has an invalid file entry {show_value(f)}")
    if len({f["path"] for f in files}) != len(files):
        raise ValueError("manifest lists a file twice")
    if not isinstance(m.get("digest"), str) or not _KEY_RE.fullmatch(m["digest"]):
        raise ValueError("manifest has no valid 'digest'")
    if not isinstance(m.get("inputs"), dict):
        raise ValueError("manifest has no 'inputs' object")
    if remote and not (isinstance(m.get("upload"), str) and _UPLOAD_RE.fullmatch(m["upload"])):
        raise ValueError("remote manifest has no valid 'upload' prefix")
    return m


def _package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


# ------------------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------------------


class ArtifactStore:
    """Artifacts addressed by (stage, key), on a local directory or any fsspec filesystem.

    ``root``: a local path (default ``artifacts``), ``file://`` URL, or fsspec URL (``memory://x``,
    ``s3://bucket/prefix``...). ``cache_dir``: where remote artifacts are downloaded (verified, keyed by
    digest) for :meth:`path`. ``stale_after_s``: age after which a remote upload no manifest references
    counts as abandoned (reported by :meth:`verify`, removed by :meth:`gc`).
    """

    def __init__(self, root: str | os.PathLike[str] = "artifacts", *, cache_dir: str | None = None,
                 stale_after_s: float = 3600.0) -> None:
        self.stale_after_s = float(stale_after_s)
        self._hash_cache: dict[tuple[str, int, int, int, int], str] = {}
        self._remote_cache: dict[tuple[str, int, str], str] = {}
        self._versions: dict[str, str] | None = None
        text = os.fspath(root)
        if not isinstance(text, str) or not text or "\x00" in text:
            raise StoreError(f"invalid store root {show_value(text)}: give a directory path or an fsspec URL")
        if text.startswith("file://"):
            text = text[len("file://"):]
        if "://" not in text:
            self._local: Path | None = Path(os.path.abspath(os.path.expanduser(text)))
            self._fs: Any = None
            self._rpath = ""
            self.root_url = f"file://{self._local}"
            try:
                self._local.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open artifact store at {self.root_url!r}: {_one_line(exc)}; "
                                 "give a writable directory") from None
            cache: str | os.PathLike[str] | None = cache_dir  # unused: local artifacts are read in place
        else:
            self._local = None
            self.root_url = _redact(text.rstrip("/"))
            try:
                import fsspec

                self._fs, path = fsspec.core.url_to_fs(text)
                self._rpath = path.rstrip("/") or "/"
                self._fs.exists(self._rpath)  # touch the backend: fail here, not mid-flow
            except Exception as exc:  # noqa: BLE001 - any backend failure (protocol, import, auth, network)
                raise StoreError(f"cannot open artifact store at {self.root_url!r}: {type(exc).__name__}: "
                                 f"{_one_line(_redact(str(exc)))}; check the URL, its fsspec backend "
                                 "package and credentials") from None
            default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mace" / "artifacts"
            cache = cache_dir or default
        self.cache_dir: Path | None = Path(cache) if cache is not None else None

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_url!r})"

    def _cache(self) -> Path:
        assert self.cache_dir is not None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir

    @property
    def is_local(self) -> bool:
        """True for a local directory root (artifacts are read in place)."""
        return self._local is not None

    # -- locations -------------------------------------------------------------------------------------

    def _rjoin(self, *parts: str) -> str:
        return "/".join([self._rpath.rstrip("/"), *parts]) if self._rpath != "/" else "/" + "/".join(parts)

    def _adir(self, stage: str, key: str) -> Path:
        assert self._local is not None
        return self._local / check_stage(stage) / check_key(key)

    def _where(self, stage: str, key: str, rel: str = "") -> str:
        """Human-facing location of an artifact (or of one of its files) for messages and problems."""
        if self._local is not None:
            base = str(self._local / stage / key)
            return f"{base}/{rel}" if rel else base
        return f"{self.root_url}/{stage}/{key}" + (f"/{rel}" if rel else "")

    def _safe_dir(self, path: Path) -> Path:
        """Create ``path`` (inside the local root) refusing symlinked components: writes stay in the root."""
        assert self._local is not None
        rel = path.relative_to(self._local)
        cur = self._local
        for part in rel.parts:
            cur = cur / part
            if cur.is_symlink():
                raise StoreError(f"refusing to write through symlink {str(cur)!r} in the store; "
                                 "replace it with a real directory")
            cur.mkdir(exist_ok=True)
        return path

    # -- manifests ---------------------------------------------------------------------------------------

    def _manifest_raw(self, stage: str, key: str) -> bytes | None:
        if self._local is not None:
            adir = self._adir(stage, key)
            if adir.parent.is_symlink() or adir.is_symlink():
                raise ArtifactCorrupt(f"artifact {stage}/{key} is corrupt: {str(adir)!r} is reached through a "
                                      "symlink; remove it and rerun to rebuild the artifact")
            try:
                return (adir / _MANIFEST).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None
        try:
            return bytes(self._fs.cat_file(self._rjoin(check_stage(stage), check_key(key), _MANIFEST)))
        except FileNotFoundError:
            return None

    def _read_manifest(self, stage: str, key: str) -> dict[str, Any] | None:
        raw = self._manifest_raw(stage, key)
        if raw is None:
            return None
        try:
            return _parse_manifest(raw, stage, key, remote=self._local is None)
        except (ValueError, RecursionError) as exc:
            raise ArtifactCorrupt(self._corrupt_msg(stage, key, [Problem(
                self._where(stage, key, _MANIFEST), "bad_manifest", _one_line(exc))])) from None

    def _corrupt_msg(self, stage: str, key: str, problems: Sequence[Problem]) -> str:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        p = problems[0]
        return (f"artifact {stage}/{key} is corrupt: {p.kind} {p.path} ({p.detail}){more}; "
                "remove it with `mace artifacts verify --repair` (or store.delete(stage, key)) and rerun to rebuild it")

    # -- queries -------------------------------------------------------------------------------------------

    def has(self, stage: str, key: str) -> bool:
        """True only for a complete artifact (manifest committed); in-progress writes are invisible."""
        check_stage(stage)
        check_key(key)
        if self._local is not None:
            adir = self._adir(stage, key)
            return not adir.parent.is_symlink() and not adir.is_symlink() and (adir / _MANIFEST).is_file()
        return bool(self._fs.exists(self._rjoin(stage, key, _MANIFEST)))

    def get(self, stage: str, key: str, *, verify: bool = True) -> ArtifactRef | None:
        """The artifact's ref, or None if absent. ``verify`` re-hashes its files (ArtifactCorrupt if changed).

        Hashes are cached per file identity (local: inode, mtime, ctime, size; remote: size and ETag or
        modification time), never for files changed in the last two seconds.
        """
        m = self._read_manifest(check_stage(stage), check_key(key))
        if m is None:
            return None
        ref = ArtifactRef(stage, key, m["digest"])
        if verify:
            if self._local is not None:
                problems = self._check_local(stage, key, m, self._adir(stage, key), cached=True)
            else:
                prefix = f"{stage}/{key}/"
                listing = {rel[len(prefix):]: info for rel, info in self._remote_files(f"{stage}/{key}").items()}
                problems = self._check_remote(stage, key, m, listing, cached=True)
            if problems:
                raise ArtifactCorrupt(self._corrupt_msg(stage, key, problems))
        return ref

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        """The manifest of ``ref`` (key, inputs, config, versions, timings, files, digest)."""
        m = self._read_manifest(ref.stage, ref.key)
        if m is None:
            raise StoreError(f"artifact {ref.id} is not in {self.root_url}; rerun the stage that makes it")
        if m["digest"] != ref.digest:
            raise ArtifactCorrupt(self._corrupt_msg(ref.stage, ref.key, [Problem(
                self._where(ref.stage, ref.key, _MANIFEST), "digest_mismatch",
                f"store has digest {m['digest'][:12]}..., the ref expects {ref.digest[:12]}...")]))
        return m

    def path(self, ref: ArtifactRef, *, verify: bool = True) -> Path:
        """Local directory holding the artifact's files; treat it as read-only.

        Local roots: the artifact directory itself (re-hashed unless ``verify=False``; cheap when cached).
        Remote roots: a verified copy in ``cache_dir/<digest>``, downloaded on first use.
        """
        m = self.manifest(ref)
        if self._local is None:
            return self._fetch(m)
        adir = self._adir(ref.stage, ref.key)
        if verify:
            problems = self._check_local(ref.stage, ref.key, m, adir, cached=True)
            if problems:
                raise ArtifactCorrupt(self._corrupt_msg(ref.stage, ref.key, problems))
        return adir

    def ls(self, stage: str | None = None) -> list[dict[str, Any]]:
        """One summary per complete artifact (stage, key, id, digest, size, files, created), sorted."""
        out = []
        for st, key in self._artifact_dirs(stage):
            try:
                m = self._read_manifest(st, key)
            except ArtifactCorrupt:
                continue  # verify() reports it
            if m is None:
                continue
            out.append({"stage": st, "key": key, "id": f"{st}/{key}", "digest": m["digest"],
                        "size": sum(f["size"] for f in m["files"]), "files": len(m["files"]),
                        "created": m.get("created")})
        return sorted(out, key=lambda d: (d["stage"], str(d["created"]), d["key"]))

    def _artifact_dirs(self, stage: str | None = None) -> list[tuple[str, str]]:
        """(stage, key) of every artifact directory, complete or not (names already validated)."""
        stages = [check_stage(stage)] if stage is not None else None
        found: set[tuple[str, str]] = set()
        if self._local is not None:
            names = stages if stages is not None else sorted(os.listdir(self._local))
            for st in names:
                sdir = self._local / st
                if not _STAGE_RE.fullmatch(st) or st in _RESERVED_STAGES or sdir.is_symlink() or not sdir.is_dir():
                    continue
                found.update((st, k) for k in os.listdir(sdir) if _KEY_RE.fullmatch(k))
        else:
            for rel in self._remote_files():
                parts = rel.split("/")
                if (len(parts) >= 3 and _STAGE_RE.fullmatch(parts[0]) and parts[0] not in _RESERVED_STAGES
                        and _KEY_RE.fullmatch(parts[1]) and (stages is None or parts[0] in stages)):
                    found.add((parts[0], parts[1]))
        return sorted(found)

    # -- writing -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, stage: str, key: str, *, config: Mapping[str, Any] | BaseModel | None = None,
               inputs: Mapping[str, str] = _EMPTY, extra: Mapping[str, Any] = _EMPTY,
               version: str | None = None) -> Iterator[Path]:
        """Yield a fresh local staging directory; on normal exit hash it, write the manifest, publish.

        On an exception nothing is published and the staging directory is removed. If the artifact
        appeared meanwhile (a concurrent writer won), the existing one is kept and ours discarded.
        ``version`` (optional): the stage version; when given, ``key`` must equal
        ``artifact_key(stage, version, config, inputs)`` and it is recorded in the manifest.
        ``inputs`` values may be artifact ids (``ref.id``) or digests: :meth:`gc` follows both.
        """
        check_stage(stage)
        check_key(key)
        inputs_d = _check_inputs(inputs)
        config_j = json_value(config, "config")
        extra_j = json_value(extra, "extra")
        _reject_secrets(config_j, "config")
        _reject_secrets(extra_j, "extra")
        if version is not None and artifact_key(stage, version, config, inputs_d) != key:
            raise StoreError(f"key {key[:12]}... for stage {stage!r} is not artifact_key(stage, version, config, "
                             "inputs) of the values given to writer(); compute it with the same arguments")
        base = self._safe_dir(self._local / _STAGING) if self._local is not None else self._cache() / _STAGING
        with _claim(base, f"{stage}.{key[:16]}", mkdir=True) as staging:
            t0 = time.perf_counter()
            yield staging
            t1 = time.perf_counter()
            files = self._scan_staging(staging)
            t2 = time.perf_counter()
            if self._versions is None:
                self._versions = _package_versions()
            manifest: dict[str, Any] = {
                "format": STORE_FORMAT_VERSION, "stage": stage, "key": key, "id": f"{stage}/{key}",
                "version": version, "config": config_j, "inputs": inputs_d, "extra": extra_j,
                "packages": self._versions, "created": _now(),
                "timings": {"write_s": round(t1 - t0, 6), "hash_s": round(t2 - t1, 6)},
                "files": files, "size": sum(f["size"] for f in files), "digest": _files_digest(files),
            }
            if self._local is not None:
                self._publish_local(stage, key, staging, manifest)
            else:
                self._publish_remote(stage, key, staging, manifest)

    def _scan_staging(self, staging: Path) -> list[dict[str, Any]]:
        """Validate and hash (and fsync) every file a writer produced."""
        files = []
        for rel, p, st in _walk(staging):
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"artifact file {rel!r} is a symlink or special file; write regular files only")
            if rel == _MANIFEST:
                raise StoreError("'manifest.json' is reserved for the store; name the file differently")
            if not _check_relpath(rel):
                raise StoreError(f"artifact file name {show_value(rel)} is not allowed: use ASCII [A-Za-z0-9._-] "
                                 "parts not starting with '.', never user strings such as concept names")
            sha, size = _hash_file(p, fsync=self._local is not None)
            files.append({"path": rel, "sha256": sha, "size": size})
        return files

    def _publish_local(self, stage: str, key: str, staging: Path, manifest: dict[str, Any]) -> bool:
        """Manifest last, then one atomic directory rename; False if another writer got there first."""
        _write_file_durable(staging / _MANIFEST, _seal(manifest))
        for dirpath, _, _ in os.walk(staging):
            _fsync_dir(dirpath)
        final = self._adir(stage, key)
        parent = self._safe_dir(final.parent)
        for _ in range(3):
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                if (final / _MANIFEST).is_file():
                    return False  # a concurrent writer won: keep theirs, ours is discarded with staging
                self._remove_local(final)  # leftover without a manifest (tampering): not an artifact
                continue
            _fsync_dir(parent)
            return True
        raise StoreError(f"could not publish {stage}/{key}: {str(final)!r} keeps reappearing; "
                         "stop other processes writing it and retry")

    def _publish_remote(self, stage: str, key: str, staging: Path, manifest: dict[str, Any]) -> bool:
        """Upload under a fresh prefix, then write the manifest (the commit marker) last."""
        mpath = self._rjoin(stage, key, _MANIFEST)
        if self._fs.exists(mpath):
            return False
        upload = f"u{int(time.time())}-{uuid.uuid4().hex[:12]}"
        manifest["upload"] = upload
        prefix = self._rjoin(stage, key, upload)
        try:
            for f in manifest["files"]:
                self._fs.put_file(str(staging / f["path"]), f"{prefix}/{f['path']}")
            if self._fs.exists(mpath):
                raise FileExistsError(mpath)
            self._fs.pipe_file(mpath, _seal(manifest))
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm(prefix, recursive=True)
            if isinstance(exc, FileExistsError):
                return False  # a concurrent writer won
            raise
        return True

    def delete(self, stage: str, key: str) -> bool:
        """Remove one artifact (it disappears atomically: manifest first / one rename); False if absent."""
        check_stage(stage)
        check_key(key)
        if self._local is not None:
            adir = self._adir(stage, key)
            if not os.path.lexists(adir):
                return False
            self._remove_local(adir)
            return True
        rdir = self._rjoin(stage, key)
        if not self._fs.exists(rdir):
            return False
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(f"{rdir}/{_MANIFEST}")
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm(rdir, recursive=True)
        return True

    def _remove_local(self, path: Path) -> None:
        """Rename ``path`` into staging (atomic disappearance), then delete it there."""
        assert self._local is not None
        with _claim(self._safe_dir(self._local / _STAGING), "trash", mkdir=False) as trash:
            os.rename(path, trash)
            remove_entry(trash)

    # -- verification -----------------------------------------------------------------------------------

    def _sha_cached(self, p: Path, st: os.stat_result, cached: bool) -> str:
        ident = (str(p), st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if cached and ident in self._hash_cache:
            return self._hash_cache[ident]
        sha, _ = _hash_file(p)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
            self._hash_cache[ident] = sha
        return sha

    def _check_local(self, stage: str, key: str, m: Mapping[str, Any], base: Path, *,
                     cached: bool) -> list[Problem]:
        """Problems of the files under ``base`` against manifest ``m`` (missing/size/hash/extra/digest)."""
        problems: list[Problem] = []
        present = {rel: (p, st) for rel, p, st in _walk(base) if rel != _MANIFEST}
        for f in m["files"]:
            where = str(base / f["path"])
            if f["path"] not in present:
                problems.append(Problem(where, "missing_file", f"listed in manifest.json ({f['size']} bytes) "
                                                               "but absent"))
                continue
            p, st = present.pop(f["path"])
            if not stat.S_ISREG(st.st_mode):
                problems.append(Problem(where, "not_regular", "not a regular file (symlink or special)"))
            elif st.st_size != f["size"]:
                problems.append(Problem(where, "size_mismatch", f"{st.st_size} bytes, manifest says {f['size']} "
                                                                "(truncated or appended)"))
            elif self._sha_cached(p, st, cached) != f["sha256"]:
                problems.append(Problem(where, "modified_file", "sha256 differs from manifest (edited bytes)"))
        problems += [Problem(str(p), "extra_file", "not listed in manifest.json") for p, _ in present.values()]
        if _files_digest(m["files"]) != m["digest"]:
            problems.append(Problem(str(base / _MANIFEST), "digest_mismatch",
                                    "file list does not hash to the manifest digest (edited manifest)"))
        return problems

    def _check_remote(self, stage: str, key: str, m: Mapping[str, Any], listing: Mapping[str, Mapping[str, Any]],
                      *, cached: bool) -> list[Problem]:
        """Problems of a remote artifact; ``listing`` maps paths relative to the artifact to fsspec infos."""
        problems: list[Problem] = []
        up = m["upload"]
        present = {rel[len(up) + 1:]: info for rel, info in listing.items() if rel.startswith(up + "/")}
        for f in m["files"]:
            where = self._where(stage, key, f"{up}/{f['path']}")
            info = present.pop(f["path"], None)
            size = None if info is None else int(info.get("size") or 0)
            if info is None:
                problems.append(Problem(where, "missing_file", "listed in manifest.json but absent"))
            elif size != f["size"]:
                problems.append(Problem(where, "size_mismatch", f"{size} bytes, manifest says {f['size']} "
                                                                "(truncated or appended)"))
            elif self._sha_remote(self._rjoin(stage, key, up, f["path"]), info, cached) != f["sha256"]:
                problems.append(Problem(where, "modified_file", "sha256 differs from manifest (edited bytes)"))
        problems += [Problem(self._where(stage, key, f"{up}/{rel}"), "extra_file", "not listed in manifest.json")
                     for rel in present]
        if _files_digest(m["files"]) != m["digest"]:
            problems.append(Problem(self._where(stage, key, _MANIFEST), "digest_mismatch",
                                    "file list does not hash to the manifest digest (edited manifest)"))
        return problems

    def _sha_remote(self, rpath: str, info: Mapping[str, Any], cached: bool) -> str:
        """sha256 of a remote file, streamed; cached on (path, size, ETag or modification time) if known."""
        tag = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "created")
                    if info.get(k) is not None), None)
        ident = (rpath, int(info.get("size") or 0), str(tag))
        if cached and tag is not None and ident in self._remote_cache:
            return self._remote_cache[ident]
        h = hashlib.sha256()
        with self._fs.open(rpath, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
        when = tag.timestamp() if isinstance(tag, datetime) else tag
        racy = isinstance(when, (int, float)) and time.time() - float(when) <= _RACY_NS / 1e9
        if tag is not None and not racy:
            self._remote_cache[ident] = h.hexdigest()
        return h.hexdigest()

    def _remote_files(self, under: str = "") -> dict[str, dict[str, Any]]:
        """Every remote file below the root (or below ``under``, relative to the root) -> fsspec info."""
        base = self._rpath.rstrip("/") + "/"
        try:
            found = self._fs.find(self._rjoin(under) if under else self._rpath, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for name, info in found.items():
            name = "/" + name.lstrip("/") if base.startswith("/") else name
            if name.startswith(base) and info.get("type", "file") == "file":
                out[name[len(base):]] = info
        return out

    def _fetch(self, m: Mapping[str, Any]) -> Path:
        """Verified local copy of a remote artifact in ``cache_dir/<digest>`` (downloaded once)."""
        stage, key, digest = str(m["stage"]), str(m["key"]), str(m["digest"])
        dest = self._cache() / digest
        if (dest / _MANIFEST).is_file():
            if not self._check_local(stage, key, m, dest, cached=True):
                return dest
            shutil.rmtree(dest, ignore_errors=True)  # damaged cache copy: fetch again
        with _claim(self._cache() / _STAGING, f"fetch.{digest[:16]}", mkdir=True) as tmp:
            for f in m["files"]:
                local = tmp / f["path"]
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._fs.get_file(self._rjoin(stage, key, m["upload"], f["path"]), str(local))
                except FileNotFoundError:
                    pass  # reported as missing_file below
            # report remote locations, not our temporary copy
            problems = [Problem(self._where(stage, key, _MANIFEST if p.kind == "digest_mismatch" else
                                            f"{m['upload']}/{p.path[len(str(tmp)) + 1:]}"), p.kind, p.detail)
                        for p in self._check_local(stage, key, m, tmp, cached=False)]
            if problems:
                raise ArtifactCorrupt(self._corrupt_msg(stage, key, problems))
            (tmp / _MANIFEST).write_bytes(_seal(dict(m)))
            try:
                os.rename(tmp, dest)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise  # else: another thread/process cached the same digest first
        return dest

    def verify(self, stage: str | None = None) -> list[Problem]:
        """Re-hash every artifact (no cache) and list what is wrong, each with its path.

        Reports tampered, truncated, missing and extra files, bad manifests, directories without a
        manifest, orphaned staging entries (interrupted writes), stale remote uploads and unreadable run
        manifests. An empty list means the store is consistent.
        """
        problems: list[Problem] = []
        if self._local is not None:
            problems += self._verify_local_tree(stage)
        else:
            problems += self._verify_remote_tree(stage)
        if stage is None:
            for _run_id, path, err in self._iter_run_files():
                if err:
                    problems.append(Problem(path, "bad_run", err))
        return sorted(problems, key=lambda p: (p.path, p.kind))

    def _verify_local_tree(self, stage: str | None) -> list[Problem]:
        assert self._local is not None
        problems: list[Problem] = []
        if stage is None:
            for name in sorted(os.listdir(self._local)):
                p = self._local / name
                if name in (_STAGING, _RUNS):
                    continue
                if not _STAGE_RE.fullmatch(name) or p.is_symlink() or not p.is_dir():
                    problems.append(Problem(str(p), "unexpected", "not a stage directory of this store"))
                    continue
                problems += [Problem(str(p / k), "unexpected", "not an artifact directory (name is not a key)")
                             for k in sorted(os.listdir(p)) if not _KEY_RE.fullmatch(k)]
        for st, key in self._artifact_dirs(stage):
            adir = self._adir(st, key)
            if adir.is_symlink() or not adir.is_dir():
                problems.append(Problem(str(adir), "unexpected", "artifact entry is not a real directory"))
                continue
            try:
                m = self._read_manifest(st, key)
            except ArtifactCorrupt as exc:
                problems.append(Problem(str(adir / _MANIFEST), "bad_manifest", str(exc).split(": ", 1)[-1]))
                continue
            if m is None:
                problems.append(Problem(str(adir), "incomplete", "directory without manifest.json "
                                                                 "(not an artifact; gc removes it)"))
                continue
            problems += self._check_local(st, key, m, adir, cached=False)
        prefix = f"{stage}." if stage is not None else ""
        for entry in _orphans(self._local / _STAGING):
            if Path(entry).name.startswith(prefix):
                problems.append(Problem(entry, "orphan_staging", "left by an interrupted write; gc removes it"))
        return problems

    def _verify_remote_tree(self, stage: str | None) -> list[Problem]:
        problems: list[Problem] = []
        files = self._remote_files()
        groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for rel, info in files.items():
            parts = rel.split("/")
            if parts[0] == _RUNS and len(parts) == 2:
                continue
            if (len(parts) >= 3 and _STAGE_RE.fullmatch(parts[0]) and parts[0] not in _RESERVED_STAGES
                    and _KEY_RE.fullmatch(parts[1])):
                if stage is None or parts[0] == stage:
                    groups.setdefault((parts[0], parts[1]), {})["/".join(parts[2:])] = info
            elif stage is None:
                problems.append(Problem(f"{self.root_url}/{rel}", "unexpected", "not part of any artifact"))
        for (st, key), listing in sorted(groups.items()):
            try:
                m = self._read_manifest(st, key)
            except ArtifactCorrupt as exc:
                problems.append(Problem(self._where(st, key, _MANIFEST), "bad_manifest",
                                        str(exc).split(": ", 1)[-1]))
                continue
            up = m["upload"] if m is not None else None
            if m is not None:
                problems += self._check_remote(st, key, m, listing, cached=False)
            for rel in listing:
                head = rel.split("/", 1)[0]
                if rel == _MANIFEST or head == up:
                    continue
                where = self._where(st, key, rel)
                match = _UPLOAD_RE.fullmatch(head)
                if match is None:
                    problems.append(Problem(where, "extra_file", "not part of the committed upload"))
                elif time.time() - int(match.group(1)) > self.stale_after_s:
                    problems.append(Problem(where, "orphan_upload", "upload no manifest references "
                                                                    "(interrupted or lost race); gc removes it"))
        return problems

    # -- runs ------------------------------------------------------------------------------------------

    def _run_path(self, run_id: str) -> str:
        check_run_id(run_id)
        if self._local is not None:
            return str(self._local / _RUNS / f"{run_id}.json")
        return self._rjoin(_RUNS, f"{run_id}.json")

    def record_run(self, run_id: str, refs: Sequence[ArtifactRef], meta: Mapping[str, Any]) -> None:
        """Write ``runs/<run_id>.json`` atomically: the artifacts a run reached, in order, plus ``meta``.

        Run manifests are gc roots. Recording the same run again replaces it (keeping ``created``).
        """
        path = self._run_path(run_id)
        if not all(isinstance(r, ArtifactRef) for r in refs):
            raise StoreError(f"record_run({run_id!r}) takes ArtifactRef objects, got {show_value(list(refs))}")
        created = _now()
        with contextlib.suppress(StoreError):
            created = self.read_run(run_id).get("created", created)
        doc = {"run_id": run_id, "created": created, "updated": _now(), "format": STORE_FORMAT_VERSION,
               "artifacts": [{"id": r.id, "stage": r.stage, "key": r.key, "digest": r.digest} for r in refs],
               "meta": json_value(meta, "meta")}
        _reject_secrets(doc["meta"], "meta")
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        if self._local is None:
            self._fs.pipe_file(path, data)  # one object PUT: atomic on object stores
            return
        runs = self._safe_dir(self._local / _RUNS)
        with _claim(self._safe_dir(self._local / _STAGING), f"run.{run_id[:32]}", mkdir=False) as tmp:
            _write_file_durable(tmp, data)
            os.replace(tmp, path)
        _fsync_dir(runs)

    def read_run(self, run_id: str) -> dict[str, Any]:
        """The run manifest written by :meth:`record_run`; StoreError if absent or unreadable."""
        path = self._run_path(run_id)
        try:
            raw = Path(path).read_bytes() if self._local is not None else self._fs.cat_file(path)
        except FileNotFoundError:
            raise StoreError(f"no run {run_id!r} in {self.root_url}; list runs with `mace artifacts ls`") from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("artifacts"), list):
                raise ValueError("not a run manifest")
            for a in doc["artifacts"]:
                ArtifactRef(a["stage"], a["key"], a["digest"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise StoreError(f"run manifest {path} is unreadable ({_one_line(exc)}); delete or rewrite it") from None
        return doc

    def _iter_run_files(self) -> list[tuple[str, str, str]]:
        """(run_id, path, error or '') for every runs/*.json."""
        if self._local is not None:
            rdir = self._local / _RUNS
            names = sorted(os.listdir(rdir)) if rdir.is_dir() else []
        else:
            names = sorted(rel.split("/", 1)[1] for rel in self._remote_files() if rel.startswith(_RUNS + "/"))
        out = []
        for name in names:
            run_id = name[:-5] if name.endswith(".json") else ""
            if not _RUN_RE.fullmatch(run_id):
                continue
            try:
                self.read_run(run_id)
                out.append((run_id, self._run_path(run_id), ""))
            except StoreError as exc:
                out.append((run_id, self._run_path(run_id), str(exc)))
        return out

    def list_runs(self) -> list[dict[str, Any]]:
        """Every readable run manifest, oldest first."""
        runs = [self.read_run(run_id) for run_id, _, err in self._iter_run_files() if not err]
        return sorted(runs, key=lambda r: (str(r.get("created")), r["run_id"]))

    # -- garbage collection -------------------------------------------------------------------------------

    def gc(self, keep_runs: Sequence[str] | None = None, dry_run: bool = False) -> list[str]:
        """Delete what no kept run reaches; return what was (or, with ``dry_run``, would be) deleted.

        Reachability starts at the kept runs' artifacts and follows every manifest's ``inputs`` values
        that are artifact ids (``stage/key``) or digests of stored artifacts, recursively. Also removed:
        directories without a manifest, orphaned staging entries, stale remote uploads. ``keep_runs=None``
        keeps all recorded runs (and refuses to run when there are none: that would delete everything;
        pass ``keep_runs=[]`` to mean it).
        """
        runs = self._iter_run_files()
        bad = [path for _, path, err in runs if err]
        if bad:
            raise StoreError(f"run manifest {bad[0]} is unreadable, so gc cannot know what it keeps alive; "
                             "fix or delete it first")
        if keep_runs is None:
            if not runs:
                raise StoreError(f"no runs recorded in {self.root_url}: gc would delete every artifact; "
                                 "record a run or pass keep_runs=[] to delete everything")
            keep_runs = [run_id for run_id, _, _ in runs]
        manifests: dict[str, dict[str, Any]] = {}
        broken: list[tuple[str, str]] = []
        for st, key in self._artifact_dirs():
            try:
                m = self._read_manifest(st, key)
            except ArtifactCorrupt:
                broken.append((st, key))  # unreadable manifest: not an artifact
                continue
            if m is None:
                if self._local is not None:
                    broken.append((st, key))  # local directory without manifest: tampering leftovers
                # remote: uploads in progress; only stale ones go (below)
            else:
                manifests[f"{st}/{key}"] = m
        by_digest: dict[str, list[str]] = {}
        for art_id, m in manifests.items():
            by_digest.setdefault(m["digest"], []).append(art_id)
        todo = [a["id"] for run_id in keep_runs for a in self.read_run(run_id)["artifacts"]]
        live: set[str] = set()
        while todo:
            art_id = todo.pop()
            if art_id in live or art_id not in manifests:
                continue
            live.add(art_id)
            for value in manifests[art_id]["inputs"].values():
                if isinstance(value, str):
                    todo += [value] if _parse_id(value) else by_digest.get(value, [])
        doomed = sorted((set(manifests) - live) | {f"{st}/{key}" for st, key in broken})
        removed = list(doomed)
        if not dry_run:
            for art_id in doomed:
                self.delete(*art_id.split("/"))
        orphans = _orphans(self._local / _STAGING) if self._local is not None else self._stale_uploads()
        removed += orphans
        if not dry_run:
            for entry in orphans:
                if self._local is not None:
                    _remove_orphan(Path(entry))
                else:
                    with contextlib.suppress(FileNotFoundError):
                        self._fs.rm(self._url_to_rpath(entry), recursive=True)
            if self.cache_dir is not None:
                _remove_orphans_quietly(self.cache_dir / _STAGING)
        return removed

    def _stale_uploads(self) -> list[str]:
        """URLs of remote upload prefixes no manifest references, older than ``stale_after_s``."""
        out = set()
        for p in self._verify_remote_tree(None):
            if p.kind == "orphan_upload":
                rel = p.path[len(self.root_url) + 1:].split("/")
                out.add("/".join([self.root_url, *rel[:3]]))
        return sorted(out)

    def _url_to_rpath(self, url: str) -> str:
        assert url.startswith(self.root_url + "/")
        return self._rjoin(url[len(self.root_url) + 1:])


# ------------------------------------------------------------------------------------------------------
# Staging entries: a name plus an flock'd "<name>.lock" beside it. An entry whose lock is not held by
# any live process is an orphan of a killed writer (the kernel drops flocks when a process dies).
# Order: lock first, entry second; entry removed (or renamed away) before the lock is unlinked.
# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _claim(base: Path, prefix: str, *, mkdir: bool) -> Iterator[Path]:
    """A fresh, locked staging name under ``base`` (a directory if ``mkdir``); removed on exit."""
    base.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        name = f"{prefix}.{os.getpid()}.{uuid.uuid4().hex[:12]}"
        lock = base / f"{name}.lock"
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False  # a gc took it for an orphan between our create and our flock: pick a new name
        if same:
            break
        os.close(fd)
    else:
        raise StoreError(f"could not claim a staging entry in {str(base)!r}; is another gc running in a loop?")
    entry = base / name
    try:
        if mkdir:
            entry.mkdir()
        yield entry
    finally:
        remove_entry(entry)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def remove_entry(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _lock_free(lock: Path) -> int | None:
    """An fd holding ``lock``'s flock if no live process holds it, else None (also None if absent)."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _orphans(base: Path) -> list[str]:
    """Staging entries (and lone locks) left by dead writers, as paths (entries without ``.lock``)."""
    if not base.is_dir():
        return []
    names = os.listdir(base)
    out = []
    for stem in sorted({n[:-5] if n.endswith(".lock") else n for n in names}):
        lock = base / f"{stem}.lock"
        if lock.exists():
            fd = _lock_free(lock)
            if fd is None:
                continue  # a live writer holds it
            os.close(fd)
        out.append(str(base / stem))
    return out


def _remove_orphan(entry: Path) -> None:
    """Delete one orphaned staging entry and its lock, holding the lock while doing so."""
    lock = entry.with_name(entry.name + ".lock")
    fd = _lock_free(lock) if lock.exists() else None
    if lock.exists() and fd is None:
        return  # became live again (cannot happen with unique names, but never delete a held entry)
    try:
        remove_entry(entry)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
    finally:
        if fd is not None:
            os.close(fd)


def _remove_orphans_quietly(base: Path) -> None:
    for entry in _orphans(base):
        _remove_orphan(Path(entry))
