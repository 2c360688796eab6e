"""Cryptographic primitives of the simulation, all from the ``cryptography`` package.

* Key agreement ``KA`` (Bonawitz et al. CCS 2017, Sec. 3.3 / Fig. 4 round 0): X25519
  (RFC 7748); the shared secret goes through HKDF-SHA256 (RFC 5869) to a 16-byte key.
* PRG (Sec. 3.1, "expanding" a seed into a mask): AES-128 in CTR mode with a zero nonce over
  zero bytes; each 64-bit little-endian word, reduced by ``& (2^bits - 1)``, is one element of
  ``Z_{2^bits}`` (exactly uniform because the modulus is a power of two).
* Authenticated encryption ``AE`` of the Shamir shares routed through the server (Sec. 3.3,
  round 1): AES-128-GCM keyed with the c-key agreement; the nonce is derived from the
  ordered pair (sender, receiver), so the one key of a pair encrypts two distinct messages.

Key material is derived deterministically from ``(seed, round, client, purpose)`` by BLAKE2b
(a simulation choice so that runs are reproducible; a deployment draws it from the OS).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 16  # PRG seeds, b_u and s_{u,v}; also the AES-GCM key size
KEY_BYTES = 32  # X25519 private and public keys
_RAW = dict(encoding=serialization.Encoding.Raw)


def material(seed: int, round: int, client: int, purpose: str, nbytes: int = KEY_BYTES) -> bytes:
    """``nbytes`` of key material for ``(seed, round, client, purpose)`` (BLAKE2b; simulation only)."""
    text = f"fedtorch-secagg/{seed}/{round}/{client}/{purpose}".encode()
    return hashlib.blake2b(text, digest_size=nbytes).digest()


def keypair(secret: bytes) -> tuple[X25519PrivateKey, bytes]:
    """``KA.gen``: an X25519 private key from 32 bytes, and its 32-byte raw public key."""
    sk = X25519PrivateKey.from_private_bytes(secret)
    return sk, public_bytes(sk)


def public_bytes(sk: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key of ``sk``."""
    return sk.public_key().public_bytes(format=serialization.PublicFormat.Raw, **_RAW)


def private_bytes(sk: X25519PrivateKey) -> bytes:
    """The 32-byte raw private key (what is Shamir-shared as ``s_u^SK``)."""
    return sk.private_bytes(format=serialization.PrivateFormat.Raw,
                            encryption_algorithm=serialization.NoEncryption(), **_RAW)


def agree(sk: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """``KA.agree`` + HKDF-SHA256: a 16-byte key both ends derive alike (``info`` binds the use)."""
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(shared)


def pair_info(purpose: str, round: int, u: int, v: int) -> bytes:
    """HKDF ``info`` for the unordered pair {u, v}: the same at u, at v and at the server."""
    a, b = sorted((u, v))
    return f"fedtorch-secagg/{purpose}/{round}/{a}/{b}".encode()


def prg(seed: bytes, length: int, bits: int) -> torch.Tensor:
    """Expand a 16-byte seed into ``length`` uniform elements of ``Z_{2^bits}`` (int64, bits <= 53)."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    words = np.frombuffer(enc.update(bytes(8 * length)) + enc.finalize(), dtype="<u8")
    return torch.from_numpy((words & np.uint64((1 << bits) - 1)).astype(np.int64))


def _nonce(sender: int, receiver: int) -> bytes:
    return sender.to_bytes(6, "little") + receiver.to_bytes(6, "little")


def seal(key: bytes, sender: int, receiver: int, plaintext: bytes) -> bytes:
    """``AE.enc``: AES-128-GCM of ``plaintext`` from ``sender`` to ``receiver`` (adds 16 tag bytes)."""
    return AESGCM(key).encrypt(_nonce(sender, receiver), plaintext, _nonce(sender, receiver))


def open_sealed(key: bytes, sender: int, receiver: int, ciphertext: bytes) -> bytes:
    """``AE.dec``; raises ``cryptography.exceptions.InvalidTag`` if the message was altered."""
    return AESGCM(key).decrypt(_nonce(sender, receiver), ciphertext, _nonce(sender, receiver))
