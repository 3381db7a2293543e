"""The cluster's CURVE key: generated, derived from the token, read, written, checked.

One key pair per cluster. Every runtime of the cluster holds the same Curve25519 pair
and uses it both as a server (its ROUTER) and as a client (its DEALERs); the server's
ZAP handler (``security.py``) accepts a client only if it proves that same key. A shared
pair is enough because the trust boundary is cluster membership: whoever holds the key
is a member (exactly as whoever holds the token is today), and CurveZMQ still gives each
connection its own short-term keys (forward secrecy) however long the cluster key lives.

Where the key comes from, first match wins (``resolve_key``):

1. ``RuntimeConfig.curve_secret_key`` (code that builds its own config);
2. ``$SPOTLIGHT_CLUSTER_KEY``: the 40-character Z85 secret key;
3. ``$SPOTLIGHT_CLUSTER_KEY_FILE``: a file written by ``spotlight cluster keys``
   (mode 0600; anything readable by group or others is refused);
4. derived from ``cluster_token`` with scrypt, so that a cluster that already shares
   a token gets encryption with no new secret to distribute. Such a key is exactly as
   strong as the token: scrypt (2^14, 8, 1; ~16 MiB, tens of ms) makes each guess
   costly, but a short token can still be guessed offline from a captured handshake.
   ``spotlight cluster keys`` gives a full 256-bit key; prefer it for real clusters.

Keys are handled as Z85 text (``bytes`` of 40 characters), as pyzmq's socket options
take them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import stat
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "ClusterKey",
    "KeyFileError",
    "check_private",
    "generate_key",
    "key_from_secret",
    "key_from_token",
    "read_key_file",
    "resolve_key",
    "write_key_file",
]

log = logging.getLogger("spotlight.runtime")

KEY_ENV = "SPOTLIGHT_CLUSTER_KEY"
"""Environment variable holding the cluster's Z85 secret key (40 characters)."""
KEY_FILE_ENV = "SPOTLIGHT_CLUSTER_KEY_FILE"
"""Environment variable naming the cluster key file (mode 0600)."""
Z85_KEY_CHARS = 40
_Z85_ALPHABET = frozenset(
    string.digits + string.ascii_lowercase + string.ascii_uppercase + ".-:+=^!/*?&<>()[]{}@%$#"
)
_SCRYPT_SALT = b"spotlight/cluster-curve-key/v1"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_SHORT_TOKEN = 16
_KEY_FILE_TAG = "Spotlight cluster key"


class KeyFileError(ValueError):
    """A cluster key or key file we refuse; the message names the source and the fix."""


@dataclass(frozen=True, repr=False)
class ClusterKey:
    """The cluster's CURVE key pair (Z85 text) and where it came from (for messages)."""

    public: bytes
    secret: bytes
    source: str

    @property
    def fingerprint(self) -> str:
        """A short, non-secret name of the key for logs: the first 8 characters of the
        public key's SHA-256 (two clusters' keys are told apart without printing one)."""
        return hashlib.sha256(self.public).hexdigest()[:8]

    def __repr__(self) -> str:  # never print the secret, even in a traceback
        return f"ClusterKey(fingerprint={self.fingerprint}, source={self.source!r})"


def generate_key() -> ClusterKey:
    """A fresh random pair (libzmq's CSPRNG): what ``spotlight cluster keys`` writes."""
    public, secret = zmq.curve_keypair()
    return ClusterKey(public, secret, "generated")


def key_from_secret(text: str | bytes, source: str) -> ClusterKey:
    """Validate a Z85 secret key and compute its public half.

    Raises ``KeyFileError`` naming ``source`` for a truncated, padded or non-Z85 key.
    """
    raw = text.encode() if isinstance(text, str) else bytes(text)
    raw = raw.strip()
    if len(raw) != Z85_KEY_CHARS:
        raise KeyFileError(
            f"{source}: a CURVE secret key is {Z85_KEY_CHARS} Z85 characters, got {len(raw)}"
            f"{_foreign_hint(raw)}; generate one with `spotlight cluster keys --out cluster.key`"
        )
    bad = sorted({chr(c) for c in raw} - _Z85_ALPHABET)
    if bad:
        raise KeyFileError(
            f"{source}: not a Z85 CURVE key (characters {''.join(bad)!r} are not Z85; a "
            "base64/hex key from another tool will not do); generate one with "
            "`spotlight cluster keys --out cluster.key`"
        )
    z85.decode(raw)  # the alphabet check above makes this total; it documents the format
    return ClusterKey(zmq.curve_public(raw), raw, source)


def _foreign_hint(raw: bytes) -> str:
    """Name the likely mistake behind a key of the wrong length."""
    if len(raw) < Z85_KEY_CHARS:
        return " (truncated?)"
    if len(raw) == 44 and raw.endswith(b"="):
        return " (a base64 key from another tool, e.g. WireGuard? not a ZeroMQ CURVE key)"
    if len(raw) == 64 and all(c in b"0123456789abcdefABCDEF" for c in raw):
        return " (a hex key from another tool? not a Z85 CURVE key)"
    return ""


@functools.lru_cache(maxsize=8)
def key_from_token(token: str) -> ClusterKey:
    """The key pair every holder of ``token`` derives alike (scrypt; cached per process).

    A Curve25519 secret key is any 32 bytes (the curve clamps them), so the KDF output
    is used as is.
    """
    if len(token) < _SHORT_TOKEN:
        log.warning(
            "deriving the CURVE key from a %d-character cluster token: an eavesdropper can "
            "test guesses of a short token offline; use a token of >= %d random characters "
            "or a generated key (`spotlight cluster keys`, then $%s)",
            len(token),
            _SHORT_TOKEN,
            KEY_FILE_ENV,
        )
    seed = hashlib.scrypt(
        token.encode(), salt=_SCRYPT_SALT, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    secret = z85.encode(seed)
    return ClusterKey(zmq.curve_public(secret), secret, "derived from the cluster token")


def check_private(path: Path) -> None:
    """Refuse a secret file that is not a regular file or that group/others can read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"cluster key file {path} does not exist; create it with "
            f"`spotlight cluster keys --out {path}`"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"cluster key file {path} is not a regular file")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        raise KeyFileError(
            f"cluster key file {path} is accessible by group/others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); anyone who reads it can join and decrypt the "
            f"cluster. Fix: chmod 600 {path}"
        )


def read_key_file(path: str | Path) -> ClusterKey:
    """Read a key file written by :func:`write_key_file` (or a file holding only the
    40-character secret), after :func:`check_private`."""
    path = Path(path)
    check_private(path)
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a Spotlight cluster key file (binary content)") from None
    fields: dict[str, str] = {}
    bare: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line in ("metadata", "curve"):
            continue
        name, sep, value = line.partition("=")  # Z85 has "=" too: only named fields split
        if sep and name.strip() in ("public-key", "secret-key"):
            fields[name.strip()] = value.strip().strip('"')
        elif not (sep and value.strip().startswith('"')):  # zcert metadata is skipped
            bare.append(line)
    source = f"cluster key file {path}"
    if "secret-key" in fields:
        key = key_from_secret(fields["secret-key"], source)
        if "public-key" in fields and fields["public-key"].encode() != key.public:
            raise KeyFileError(
                f"{source}: its public-key does not belong to its secret-key (edited or "
                "mixed up with another cluster's file?); regenerate it with "
                f"`spotlight cluster keys --out {path} --force`"
            )
        return key
    if "public-key" in fields:
        raise KeyFileError(
            f"{source} holds only a public key; a runtime needs the secret key file that "
            "`spotlight cluster keys` wrote"
        )
    if len(bare) == 1:
        return key_from_secret(bare[0], source)
    raise KeyFileError(
        f"{source}: not a Spotlight cluster key file (expected a 'secret-key = \"...\"' line); "
        f"generate one with `spotlight cluster keys --out {path}`"
    )


def write_key_file(path: str | Path, key: ClusterKey, *, force: bool = False) -> Path:
    """Write ``key`` to ``path`` with mode 0600 from the start (never briefly readable).

    The format is ZeroMQ's zcert text (``zmq.auth.load_certificate`` reads it too).
    Refuses to overwrite an existing file unless ``force``: an overwritten key locks
    every node that still holds the old one out of the cluster.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{path} exists; nodes holding that key would be locked out. Pass --force to replace it"
        ) from None
    os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask; an existing file keeps its own
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = (
        f"#   {_KEY_FILE_TAG} (CURVE secret). Keep it private: mode 0600.\n"
        f"#   Generated {stamp}; fingerprint {key.fingerprint}.\n"
        "metadata\n"
        "curve\n"
        f'    public-key = "{key.public.decode()}"\n'
        f'    secret-key = "{key.secret.decode()}"\n'
    )
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(body)
    return path


def resolve_key(
    *, explicit: str | None, token: str | None, environ: Mapping[str, str] | None = None
) -> ClusterKey | None:
    """The cluster key from the first source that has one (see the module docstring);
    ``None`` when there is none (the caller says what to set)."""
    env = os.environ if environ is None else environ
    if explicit:
        return key_from_secret(explicit, "RuntimeConfig.curve_secret_key")
    if env.get(KEY_ENV):
        return key_from_secret(env[KEY_ENV], f"${KEY_ENV}")
    if env.get(KEY_FILE_ENV):
        return read_key_file(env[KEY_FILE_ENV])
    if token:
        return key_from_token(token)
    return None
