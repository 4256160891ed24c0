"""Persist moto's state in $LOCAL_DIR so `make serve` keeps its data across restarts.

moto keeps everything in memory; this pickles the backends of the services the stack
uses (S3 with every object version, DynamoDB, EventBridge, SQS, Cognito) and loads them
back into the live backends on the next start. Locks and key objects are rebuilt, not
pickled. Object version ids survive, so index items keep pointing at the right bytes.
The snapshot is written to a temporary file and renamed, so a crash while saving
leaves the previous snapshot intact.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.backends import get_backend
from moto.s3.utils import _VersionedKeyStore

SERVICES = ("s3", "dynamodb", "events", "sqs", "cognito-idp", "secretsmanager")
FORMAT_VERSION = 1

_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def _rsa_key_from_pem(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _versioned_key_store(items: list[tuple[str, list[Any]]]) -> _VersionedKeyStore:
    store = _VersionedKeyStore()
    for key, versions in items:
        dict.__setitem__(store, key, versions)
    return store


class _StatePickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _VersionedKeyStore):
            # Its __setitem__ appends a version, so the default dict pickling would keep
            # only the newest version of every key.
            return (_versioned_key_store, (list(dict.items(obj)),))
        if isinstance(obj, _LOCK_TYPES):
            factory = threading.RLock if isinstance(obj, _LOCK_TYPES[1]) else threading.Lock
            return (factory, ())
        if isinstance(obj, rsa.RSAPrivateKey):
            pem = obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            return (_rsa_key_from_pem, (pem,))
        return NotImplemented


def _backend(name: str) -> Any:
    return get_backend(name)  # type: ignore[call-overload]


def save(path: Path) -> None:
    buffer = io.BytesIO()
    state = {name: dict(_backend(name)) for name in SERVICES}
    _StatePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump({"version": FORMAT_VERSION, "state": state})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as fh:
        fh.write(buffer.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())
    temporary.replace(path)


def load(path: Path) -> bool:
    """Restore a snapshot into moto's live backends; False when there is none."""
    if not path.exists():
        return False
    with open(path, "rb") as fh:
        snapshot = pickle.load(fh)  # noqa: S301 (our own file in $LOCAL_DIR)
    if snapshot.get("version") != FORMAT_VERSION:
        raise RuntimeError(f"{path} was written by another version of the local runtime; move it away")
    for name, accounts in snapshot["state"].items():
        live = _backend(name)
        live.clear()
        live.update(accounts)
    return True
