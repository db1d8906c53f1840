#!/usr/bin/env python3
"""anima_pymodule: an Anima module written in Python from PROTOCOL.md alone.

It is a reference for people writing modules in other languages: everything a
module does on the wire is here, in one file, with the PROTOCOL.md section it
implements. It depends on the standard library, `grpcio` and `cryptography`
only; protobuf is encoded and decoded by hand (no generated code).

It serves:
  - anima.v1.LeaseControl/Control   the lease control stream (§2, §3)
  - anima.v1.Probe/Touch, /Read      the conformance probe (§8), as capabilities (§4)
  - anima.v1.ModuleAdmin/Status, /Shutdown (§6.4)
  - grpc.health.v1.Health/Check      (an extra; needs no lease, §4)

It calls, through its Core (§10; CoreClient): the registry (anima.v1.Registry/
Discover) and the anima.sample/kv interface (KvStore/Put, /Get). With
PYMODULE_KV_SELFTEST=1 it does so once, after its first lease, and writes one
`PYMODULE KV SELFTEST ok …` or `… failed: …` line to stderr.

usage:
  anima_pymodule.py [CONTRACT]   run the module (§6.1); CONTRACT defaults to
                                 module.toml beside this file
  anima_pymodule.py --self-test [PROTOCOL.md]
                                 check the token, key and proof code against known
                                 vectors and PROTOCOL.md Appendix A
"""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import hmac
import itertools
import json
import os
import queue
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import tomllib
from concurrent import futures

# PROTOCOL.md §1: TLS 1.3 only. grpcio's server credentials take no TLS version,
# and BoringSSL's TLS 1.3 suites are not configurable, so the module leaves TLS
# 1.2 exactly one cipher suite, one that needs an RSA certificate: Anima
# certificates are Ed25519 or P-256, so every TLS 1.2 handshake fails
# (NO_SHARED_CIPHER) while TLS 1.3 is untouched. Read by gRPC C-core when it
# loads, so it is set before the import.
os.environ["GRPC_SSL_CIPHER_SUITES"] = "ECDHE-RSA-AES128-GCM-SHA256"

import grpc  # noqa: E402  (after GRPC_SSL_CIPHER_SUITES)
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# ---------------------------------------------------------------------------
# Constants from PROTOCOL.md
# ---------------------------------------------------------------------------

OFFER_TIMEOUT_S = 5.0  # §2 step 1: the offer must arrive within 5 s of the stream opening
MAX_TOKEN_BYTES = 8192  # §3: longer tokens are refused
IAT_SKEW_S = 300  # §3.1 step 5
MIN_TTL_MS = 50  # §3.1 step 7
REPLAY_WINDOW = 1024  # §4
MAX_HOLD_MS = 60_000  # §8 Touch
REVOCATION_CONDITIONS = ["explicit-revocation", "explicit-refusal", "connection-loss", "certificate-expiry"]  # §3.1 `rev`

HEADERS = {  # §3: the header is exactly these bytes, chosen by the signer's certificate key
    "EdDSA": b'{"alg":"EdDSA","typ":"JWT"}',
    "ES256": b'{"alg":"ES256","typ":"JWT"}',
    "HS256": b'{"alg":"HS256","typ":"JWT"}',  # renew and renewed only, under the renewal key (§3.3)
}

CONTROL_METHOD = "/anima.v1.LeaseControl/Control"
STATUS_METHOD = "/anima.v1.ModuleAdmin/Status"
SHUTDOWN_METHOD = "/anima.v1.ModuleAdmin/Shutdown"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
TOUCH_METHOD = "/anima.v1.Probe/Touch"
READ_METHOD = "/anima.v1.Probe/Read"

EPHEMERAL, RESIDENT_PRIVATE, RESIDENT_SHARED = "ephemeral", "resident-private", "resident-shared"  # §6.2

# Limits: every peer input is bounded (by the protocol's own limits where it sets one).
MAX_MESSAGE_BYTES = 64 * 1024  # any request or control frame; tokens are at most 8 KiB anyway
MAX_SCOPE_METHODS = 1024  # distinct methods in a scope (§3.1; a repeated one counts once)
MAX_TEXT = 1024  # a claim string, a refusal detail, a shutdown reason
RPC_WORKERS = 64  # each control stream holds one worker (plus a reader thread) for its lifetime
TOMBSTONE_TTL_S = 60.0  # how long an ended lease still answers for its connection (§2; see Module._lease_on)
MAX_TOMBSTONES = 4096

URN_RE = re.compile(r"urn:anima:(core|module|user):[a-z0-9][a-z0-9._-]{0,62}")  # §1
METHOD_RE = re.compile(r"/(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*")
PROOF_RE = re.compile(r"v1\.([1-9][0-9]{0,19})\.([A-Za-z0-9_-]{22})")  # §4: v1.<seq>.<tag>, tag = 16 bytes
DURATION_RE = re.compile(r"([0-9]{1,9})(ms|s|m|h)")  # §6.2
DURATION_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def log(message: str) -> None:
    """Logs go to stderr; stdout carries the ready line only (§6.1)."""
    stamp = time.strftime("%H:%M:%S", time.localtime())
    print(f"{stamp} pymodule: {message}", file=sys.stderr, flush=True)


def shown(value, limit: int = 120) -> str:
    """A peer-supplied value made safe to log: printable ASCII, bounded."""
    text = value if isinstance(value, str) else repr(value)
    cut = text[: limit + 1]
    cut = "".join(c if c.isprintable() and c.isascii() else "?" for c in cut)
    return cut if len(cut) <= limit else cut[:limit] + "..."


# ---------------------------------------------------------------------------
# Protobuf wire format, by hand (no generated code)
# ---------------------------------------------------------------------------


class WireError(ValueError):
    """A peer sent bytes that are not the protobuf message expected."""


def enc_varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def enc_len(field: int, data: bytes) -> bytes:
    """A length-delimited field (string, bytes, message); always emitted."""
    return enc_varint(field << 3 | 2) + enc_varint(len(data)) + data


def enc_str(field: int, text: str) -> bytes:
    """A proto3 string field; the empty string is the default and is omitted."""
    return enc_len(field, text.encode("utf-8")) if text else b""


def enc_uint(field: int, value: int) -> bytes:
    """A proto3 varint field; zero is the default and is omitted."""
    return enc_varint(field << 3) + enc_varint(value) if value else b""


def dec_varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        if i >= len(data):
            raise WireError("truncated varint")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if result >> 64:
                raise WireError("varint overflows 64 bits")
            return result, i
        shift += 7
    raise WireError("varint longer than 10 bytes")


def dec_fields(data: bytes) -> dict[int, list[tuple[int, int | bytes]]]:
    """field number -> [(wire type, value)], in order. Unknown fields are kept (and
    ignored by callers, as proto3 does); anything malformed raises WireError."""
    fields: dict[int, list[tuple[int, int | bytes]]] = {}
    i = 0
    while i < len(data):
        key, i = dec_varint(data, i)
        number, wire = key >> 3, key & 7
        if not 0 < number < 1 << 29:
            raise WireError(f"bad field number {number}")
        if wire == 0:
            value, i = dec_varint(data, i)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if i + size > len(data):
                raise WireError("truncated fixed-width field")
            value, i = data[i : i + size], i + size
        elif wire == 2:
            length, i = dec_varint(data, i)
            if length > len(data) - i:
                raise WireError("truncated length-delimited field")
            value, i = data[i : i + length], i + length
        else:  # groups (3, 4) and reserved types
            raise WireError(f"unsupported wire type {wire}")
        fields.setdefault(number, []).append((wire, value))
    return fields


def last(fields: dict, number: int, wire: int):
    """The value of a singular field (the last one wins, as in protobuf), or None."""
    values = fields.get(number)
    if not values:
        return None
    got, value = values[-1]
    if got != wire:
        raise WireError(f"field {number} has wire type {got}, expected {wire}")
    return value


def dec_string(fields: dict, number: int, limit: int) -> str:
    raw = last(fields, number, 2)
    if raw is None:
        return ""
    if len(raw) > limit:
        raise WireError(f"field {number} is longer than {limit} bytes")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"field {number} is not UTF-8") from None


# anima.v1.ControlFrame (lease.proto): a oneof of SignedToken{jws=1} and Refusal{reason=1, detail=2}.
FRAME_KINDS = {1: "offer", 2: "grant", 3: "renew", 4: "renewed", 5: "rescope", 6: "rescoped", 7: "revoke", 8: "refuse"}
FRAME_NUMBERS = {kind: number for number, kind in FRAME_KINDS.items()}


def decode_frame(data: bytes) -> tuple[str, object]:
    """-> ("refuse", (reason, detail)) or (kind, jws)."""
    fields = dec_fields(data)
    present = [n for n in fields if n in FRAME_KINDS]
    if len(present) != 1 or len(fields[present[0]]) != 1:
        raise WireError("a control frame must set exactly one of its frames")
    number = present[0]
    inner = last(fields, number, 2)
    if inner is None:
        raise WireError("the frame is not a message")
    inner_fields = dec_fields(inner)
    if number == 8:
        return "refuse", (dec_string(inner_fields, 1, MAX_TEXT), dec_string(inner_fields, 2, MAX_TEXT))
    return FRAME_KINDS[number], dec_string(inner_fields, 1, MAX_MESSAGE_BYTES)  # jws_verify bounds it to 8192


def frame_token(kind: str, jws: str) -> bytes:
    return enc_len(FRAME_NUMBERS[kind], enc_str(1, jws))


def frame_refuse(reason: str, detail: str) -> bytes:
    return enc_len(FRAME_NUMBERS["refuse"], enc_str(1, reason) + enc_str(2, detail[:MAX_TEXT]))


# ---------------------------------------------------------------------------
# Reasons and refusals (§5)
# ---------------------------------------------------------------------------

_C = grpc.StatusCode
REASON_CODES = {
    "NO_LEASE": _C.UNAUTHENTICATED,
    "BAD_PROOF": _C.UNAUTHENTICATED,
    "PROOF_REPLAYED": _C.UNAUTHENTICATED,
    "LEASE_EXPIRED": _C.UNAUTHENTICATED,
    "LEASE_REVOKED": _C.UNAUTHENTICATED,
    "SCOPE_DENIED": _C.PERMISSION_DENIED,
    "WRONG_CORE": _C.PERMISSION_DENIED,
    "STANDBY": _C.UNAVAILABLE,
    "UNKNOWN_METHOD": _C.UNIMPLEMENTED,
    "BAD_SIGNATURE": _C.UNAUTHENTICATED,
    "BAD_TOKEN": _C.INVALID_ARGUMENT,
    "IDENTITY_MISMATCH": _C.PERMISSION_DENIED,
    "BINDING_MISMATCH": _C.PERMISSION_DENIED,
    "LEASE_EXISTS": _C.ALREADY_EXISTS,
    "PROTOCOL_VIOLATION": _C.FAILED_PRECONDITION,
    "RENEWAL_REFUSED": _C.PERMISSION_DENIED,
    "CONNECTION_LOST": _C.UNAVAILABLE,
    "SHUTDOWN": _C.UNAVAILABLE,
    "NOT_OPERATOR": _C.PERMISSION_DENIED,
    "NOT_FOUND": _C.NOT_FOUND,
    "POLICY_DENIED": _C.PERMISSION_DENIED,
    "MODULE_STANDBY": _C.UNAVAILABLE,
    "MODULE_FAILED": _C.UNAVAILABLE,
    "MODULE_UNAVAILABLE": _C.UNAVAILABLE,
}


class Refused(Exception):
    """A refusal with an `anima` reason: a control-stream `refuse` or a call's status."""

    def __init__(self, reason: str, detail: str, lease_id: str | None = None):
        super().__init__(f"{reason}: {detail}")
        assert reason in REASON_CODES, reason
        self.reason, self.detail, self.lease_id = reason, detail, lease_id


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


def status_details(code: grpc.StatusCode, message: str, reason: str, lease_id: str | None) -> bytes:
    """google.rpc.Status{code=1, message=2, details=3: Any{type_url=1, value=2:
    google.rpc.ErrorInfo{reason=1, domain=2, metadata=3: map<string,string>}}}."""
    metadata = enc_len(3, enc_str(1, "lease_id") + enc_str(2, lease_id)) if lease_id else b""
    info = enc_str(1, reason) + enc_str(2, "anima") + metadata
    any_ = enc_str(1, "type.googleapis.com/google.rpc.ErrorInfo") + enc_len(2, info)
    return enc_uint(1, code.value[0]) + enc_str(2, message) + enc_len(3, any_)


def abort_refused(context, refusal: Refused) -> None:
    """Ends the call with the reason's gRPC code and the ErrorInfo details (§5). Raises."""
    code = REASON_CODES[refusal.reason]
    message = f"{refusal.reason}: {refusal.detail}".encode("ascii", "replace").decode()
    details = status_details(code, message, refusal.reason, refusal.lease_id)
    context.abort_with_status(_Status(code, message, (("grpc-status-details-bin", details),)))


# ---------------------------------------------------------------------------
# base64url, strict
# ---------------------------------------------------------------------------

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text) -> bytes:
    """Unpadded base64url; rejects padding, other alphabets and non-canonical trailing bits."""
    if not isinstance(text, str) or not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw


# ---------------------------------------------------------------------------
# Signatures (§3): EdDSA with strict verification, ES256 as R || S
# ---------------------------------------------------------------------------

# Edwards25519 arithmetic, only to reject small-order points (strict verification, §3).
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493  # order of the base point
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _ed_decode(encoded: bytes):
    """RFC 8032 §5.1.3 point decoding -> (x, y), or None if it is not a canonical point."""
    y = int.from_bytes(encoded, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif v * x * x % _P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _ed_double(point):
    x, y = point
    t = _D * x * x * y * y % _P
    return (2 * x * y * pow(1 + t, _P - 2, _P) % _P, (y * y + x * x) * pow(1 - t, _P - 2, _P) % _P)


def ed25519_weak_point(encoded: bytes) -> bool:
    """True if `encoded` is not a canonical point or is of small order ([8]P = identity)."""
    point = _ed_decode(encoded)
    if point is None:
        return True
    for _ in range(3):
        point = _ed_double(point)
    return point == (0, 1)


class VerifyKey:
    """A peer's certificate key, as a token verifier (§3)."""

    def __init__(self, public_key):
        self.key = public_key
        self.alg = None
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            self.alg = "EdDSA"
            self.weak = ed25519_weak_point(public_key.public_bytes_raw())
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1):
            self.alg = "ES256"

    def verify(self, signing_input: bytes, sig: bytes) -> bool:
        if self.alg == "EdDSA":
            # Strict (§3): canonical S, A and R not of small order; then RFC 8032.
            if len(sig) != 64 or self.weak or int.from_bytes(sig[32:], "little") >= _L or ed25519_weak_point(sig[:32]):
                return False
            try:
                self.key.verify(sig, signing_input)
                return True
            except InvalidSignature:
                return False
        if self.alg == "ES256":
            # R || S, each 32 bytes big-endian (RFC 7518 §3.4), not DER.
            if len(sig) != 64:
                return False
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            if not (0 < r < _P256_N and 0 < s < _P256_N):
                return False
            try:
                self.key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
                return True
            except InvalidSignature:
                return False
        return False


class SigningKey:
    """The module's own certificate key (§1: tokens are signed with the certificate's key)."""

    def __init__(self, private_key):
        self.key = private_key
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            self.alg = "EdDSA"
        elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
            self.alg = "ES256"
        else:
            raise ValueError("the module key must be Ed25519 or ECDSA P-256")

    def sign(self, signing_input: bytes) -> bytes:
        if self.alg == "EdDSA":
            return self.key.sign(signing_input)
        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def public_matches(self, public_key) -> bool:
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return self.key.public_key().public_bytes(*fmt) == public_key.public_bytes(*fmt)


# An Ed25519 key in PKCS#8 v2 form (RFC 5958 OneAsymmetricKey, with its public key),
# which `cryptography` does not load: SEQUENCE { INTEGER 1, SEQUENCE { OID 1.3.101.112 },
# OCTET STRING { OCTET STRING seed }, [1] public key }.
_ED25519_PKCS8_V2_PREFIX = bytes.fromhex("3051020101300506032b657004220420")


def load_private_key(pem: bytes):
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
        der = base64.b64decode(body, validate=True)
        if len(der) == 83 and der.startswith(_ED25519_PKCS8_V2_PREFIX):
            key = ed25519.Ed25519PrivateKey.from_private_bytes(der[16:48])
            if der[48:51] == b"\x81\x21\x00" and der[51:] == key.public_key().public_bytes_raw():  # [1] BIT STRING
                return key
        raise


def jws_sign(key: SigningKey, claims: dict) -> str:
    """JWS compact serialization (§3) of compact JSON claims."""
    header = b64url(HEADERS[key.alg])
    body = b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=True).encode("ascii"))
    signing_input = f"{header}.{body}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode('ascii')))}"


def split_token(jws) -> tuple[bytes, bytes, bytes, bytes]:
    """The form of a token (§3, stage 1, but the header): its signing input as received,
    then its three segments decoded. BAD_TOKEN when it is too long, not three segments,
    or a segment is not unpadded base64url."""
    if not isinstance(jws, str) or len(jws.encode("utf-8")) > MAX_TOKEN_BYTES:
        raise Refused("BAD_TOKEN", f"a token is longer than {MAX_TOKEN_BYTES} bytes")
    parts = jws.split(".")
    if len(parts) != 3:
        raise Refused("BAD_TOKEN", "a token is not a JWS compact serialization")
    try:
        header, body, sig = (b64url_decode(p) for p in parts)
    except ValueError:
        raise Refused("BAD_TOKEN", "a token segment is not unpadded base64url") from None
    return f"{parts[0]}.{parts[1]}".encode("ascii"), header, body, sig


def jws_verify(key: VerifyKey, jws) -> bytes:
    """Checks size, envelope, header and signature (§3); returns the claims' bytes.
    An envelope that cannot be split and decoded, or a header other than the one the
    peer's key requires, is BAD_TOKEN; a signature that does not verify is
    BAD_SIGNATURE."""
    signing_input, header, body, sig = split_token(jws)
    if key.alg is None:
        raise Refused("BAD_SIGNATURE", "the peer's certificate key is neither Ed25519 nor ECDSA P-256")
    if header != HEADERS[key.alg]:
        raise Refused("BAD_TOKEN", f"the token header is not {HEADERS[key.alg].decode()}")
    if not key.verify(signing_input, sig):
        raise Refused("BAD_SIGNATURE", "the token signature does not verify with the peer's certificate key")
    return body


def jws_mac(renewal_key: bytes, claims: dict) -> str:
    """A renewal token (§3, §3.4): JWS compact serialization, HS256 under the lease's renewal key."""
    header = b64url(HEADERS["HS256"])
    body = b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=True).encode("ascii"))
    signing_input = f"{header}.{body}"
    return f"{signing_input}.{b64url(hmac.new(renewal_key, signing_input.encode('ascii'), hashlib.sha256).digest())}"


def is_mac(jws) -> bool:
    """Whether a token's header segment is the HS256 one (§3.4: a renewal token)."""
    return isinstance(jws, str) and jws.split(".", 1)[0] == b64url(HEADERS["HS256"])


def mac_verify(renewal_key: bytes, jws) -> bytes:
    """Checks size, envelope, header and the HS256 tag (§3) of a renewal token; returns
    the claims' bytes. BAD_TOKEN for the form, BAD_SIGNATURE for a tag that does not verify."""
    signing_input, header, body, tag = split_token(jws)
    if header != HEADERS["HS256"]:
        raise Refused("BAD_TOKEN", f"the token header is not {HEADERS['HS256'].decode()}")
    if len(tag) != 32:
        raise Refused("BAD_TOKEN", "an HS256 tag is not 32 bytes")
    expected = hmac.new(renewal_key, signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, tag):
        raise Refused("BAD_SIGNATURE", "the renewal tag does not verify with the lease's renewal key")
    return body


def _reject_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def _reject_number(text):
    raise ValueError(f"not an integer: {text[:20]}")


def parse_claims(body: bytes, typ: str, required: set[str], optional: frozenset[str] = frozenset()) -> dict:
    """Claims are a JSON object (§3): no duplicate keys, integers only, unknown claims
    refused, every claim this token type carries present, `typ` as expected."""
    try:
        claims = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_number,
            parse_constant=_reject_number,
        )
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Refused("BAD_TOKEN", f"the claims are not a JSON object: {shown(str(e), 80)}") from None
    if not isinstance(claims, dict):
        raise Refused("BAD_TOKEN", "the claims are not a JSON object")
    unknown = sorted(set(claims) - required - optional)
    if unknown:
        raise Refused("BAD_TOKEN", f"unknown claims: {shown(', '.join(unknown))}")
    missing = sorted(required - set(claims))
    if missing:
        raise Refused("BAD_TOKEN", f"missing claims: {', '.join(missing)}")
    if claims["typ"] != typ:
        raise Refused("BAD_TOKEN", f"typ is {shown(claims['typ'], 40)}, expected {typ}")
    return claims


def claim_int(claims: dict, name: str, low: int = 0, high: int = 2**64 - 1) -> int:
    value = claims[name]
    if type(value) is not int or not low <= value <= high:
        raise Refused("BAD_TOKEN", f"{name} is not an integer in [{low}, {high}]")
    return value


def claim_str(claims: dict, name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise Refused("BAD_TOKEN", f"{name} is not a string")
    return value


def claim_b64(claims: dict, name: str, size: int) -> bytes:
    try:
        raw = b64url_decode(claims[name])
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise Refused("BAD_TOKEN", f"{name} is not base64url of {size} bytes")
    return raw


def claim_scope(claims: dict) -> list[str]:
    scope = claims["scope"]
    if not isinstance(scope, list) or not all(isinstance(m, str) and len(m) <= MAX_TEXT for m in scope):
        raise Refused("BAD_TOKEN", "scope is not an array of method paths")
    if len(set(scope)) > MAX_SCOPE_METHODS:
        raise Refused("BAD_TOKEN", f"scope names more than {MAX_SCOPE_METHODS} methods")
    return scope


# ---------------------------------------------------------------------------
# The lease tokens (§3.1, §3.3, §3.4), as pure functions of their inputs, so that
# --self-test can run them on PROTOCOL.md Appendix A. `core` and `own` are parties
# with `urn`, `fingerprint` (and for `core`, `key`: a VerifyKey).
# ---------------------------------------------------------------------------

OFFER_CLAIMS = {"typ", "lid", "con", "pro", "scope", "ttl_ms", "iat", "exp", "cnf", "kx", "rev"}


def check_offer_token(jws: str, core, own, methods, now: float) -> dict:
    """§3.1 steps 1-7 (step 0, who may lease, and 8, one lease per connection, are the
    module's state). `now` is the wall clock, Unix seconds. Returns the claims."""
    body = jws_verify(core.key, jws)  # 1: BAD_SIGNATURE (BAD_TOKEN if not even a JWS)
    claims = parse_claims(body, "anima-offer+v1", OFFER_CLAIMS)  # 2: typ, JSON shape
    claim_b64(claims, "lid", 16)
    con, pro = claim_str(claims, "con"), claim_str(claims, "pro")
    scope = claim_scope(claims)
    ttl_ms, iat, exp = claim_int(claims, "ttl_ms"), claim_int(claims, "iat"), claim_int(claims, "exp")
    cnf = claims["cnf"]
    if (
        not isinstance(cnf, dict)
        or set(cnf) != {"iss_x5t#S256", "aud_x5t#S256"}
        or not all(isinstance(v, str) for v in cnf.values())
    ):
        raise Refused("BAD_TOKEN", "cnf must be {iss_x5t#S256, aud_x5t#S256}")
    claim_b64(claims, "kx", 32)
    rev = claims["rev"]
    if not isinstance(rev, list) or not all(isinstance(r, str) and r in REVOCATION_CONDITIONS for r in rev):
        raise Refused("BAD_TOKEN", "rev must be an array of revocation conditions")
    if con != core.urn or pro != own.urn:  # 3
        raise Refused("IDENTITY_MISMATCH", f"the offer names {shown(con)} -> {shown(pro)}")
    if cnf["iss_x5t#S256"] != core.fingerprint or cnf["aud_x5t#S256"] != own.fingerprint:  # 4
        raise Refused("BINDING_MISMATCH", "the offer is bound to other certificates")
    if abs(iat - now) > IAT_SKEW_S or exp < iat:  # 5
        raise Refused("BAD_TOKEN", "iat is not within 300 s of our clock, or exp < iat")
    undeclared = [m for m in scope if m not in methods]
    if undeclared:  # 6
        raise Refused("SCOPE_DENIED", f"undeclared methods: {shown(', '.join(undeclared))}")
    if ttl_ms < MIN_TTL_MS:  # 7
        raise Refused("BAD_TOKEN", f"ttl_ms is below {MIN_TTL_MS}")
    return claims


def grant_token(signer: SigningKey, offer: str, claims: dict, core, own, ttl_ms: int, kx_secret, now_ms: int):
    """The grant for a verified offer (§3.1), and the per-call key (§3.3).
    Claims are written in the order of PROTOCOL.md Appendix A. -> (grant JWS, key)."""
    try:
        shared = kx_secret.exchange(x25519.X25519PublicKey.from_public_bytes(b64url_decode(claims["kx"])))
    except ValueError:  # OpenSSL refuses to return the all-zero result
        shared = bytes(32)
    if shared == bytes(32):
        raise Refused("BAD_TOKEN", "kx gives an all-zero shared secret")
    grant = jws_sign(
        signer,
        {
            "typ": "anima-grant+v1",
            "lid": claims["lid"],
            "con": core.urn,  # the consumer is the Core, the provider the module, whoever signs
            "pro": own.urn,
            "scope": sorted(set(claims["scope"])),  # the requested set, sorted (§3.1)
            "ttl_ms": ttl_ms,
            "iat": now_ms // 1000,
            # §3.2: iat plus the TTL in whole seconds, rounded down, at least 1.
            "exp": now_ms // 1000 + max(1, ttl_ms // 1000),
            "cnf": {"iss_x5t#S256": own.fingerprint, "aud_x5t#S256": core.fingerprint},
            "kx": b64url(kx_secret.public_key().public_bytes_raw()),
            "offer": b64url(hashlib.sha256(offer.encode("ascii")).digest()),
            "rev": REVOCATION_CONDITIONS,
        },
    )
    return grant, lease_keys(shared, offer, grant, b64url_decode(claims["lid"]))


# The claims of each step a Core sends (§3.4), beyond typ, lid, seq and iat: required, optional.
CORE_STEPS = {
    "anima-renew+v1": ({"ttl_ms"}, frozenset()),
    "anima-rescope+v1": ({"scope"}, frozenset()),
    # `detail` is always present, "" when there is nothing to say (§3).
    "anima-revoke+v1": ({"reason", "detail"}, frozenset()),
}


def _token_typ(body: bytes):
    """The `typ` a token's claims name, if they are a JSON object with one (else None)."""
    try:
        claims = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return claims.get("typ") if isinstance(claims, dict) else None


def check_step_token(jws: str, core_key: VerifyKey, renewal_key: bytes, typ: str, lid: str, required, optional) -> dict:
    """A Core control step (§3.4): signature (a renewal: its HS256 tag under the renewal
    key), claims (`typ`, `lid`, `seq`, `iat` and the claim set of the token's own `typ`;
    HS256 exactly for a renewal), the lease id. A control step's `iat` is audit only
    (§3.2: never checked against the clock). The caller checks `seq` ordering, then
    that the token's `typ` is its frame's (`typ`: PROTOCOL_VIOLATION if not)."""
    mac = is_mac(jws)
    body = mac_verify(renewal_key, jws) if mac else jws_verify(core_key, jws)
    own = _token_typ(body)
    if own in CORE_STEPS and own != typ:
        required, optional = CORE_STEPS[own]
        typ = own
    claims = parse_claims(body, typ, {"typ", "lid", "seq", "iat"} | set(required), frozenset(optional))
    if mac != (claims["typ"] == "anima-renew+v1"):
        raise Refused("BAD_TOKEN", f"a {claims['typ']} token must be " + ("HS256 under the renewal key" if not mac else "signed with the certificate key"))
    if claims["lid"] != lid:
        raise Refused("PROTOCOL_VIOLATION", "the token names another lease")
    claim_int(claims, "seq", 1)
    claim_int(claims, "iat")
    return claims


def renewed_token(renewal_key: bytes, lid: str, seq: int, re: int, granted_ms: int, now_ms: int) -> str:
    """The answer to a renewal (§3.4), HS256 under the lease's renewal key."""
    claims = {
        "typ": "anima-renewed+v1",
        "lid": lid,
        "seq": seq,
        "iat": now_ms // 1000,
        "re": re,
        "ttl_ms": granted_ms,
        "exp": now_ms // 1000 + max(1, granted_ms // 1000),
    }
    return jws_mac(renewal_key, claims)


# ---------------------------------------------------------------------------
# Identities (§1)
# ---------------------------------------------------------------------------


class Identity:
    """A party as its certificate shows it: URN (exactly one), fingerprint, key."""

    def __init__(self, cert: x509.Certificate):
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise ValueError("the certificate has no subject alternative name") from None
        urns = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.lower().startswith("urn:anima:")]
        if len(urns) != 1 or not URN_RE.fullmatch(urns[0]):
            raise ValueError(f"the certificate must carry exactly one anima URN, it has {shown(urns)}")
        self.urn = urns[0]
        self.kind = self.urn.split(":")[2]
        # cnf fingerprints (§3.1): base64url SHA-256 of the certificate's DER.
        self.fingerprint = b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
        self.key = VerifyKey(cert.public_key())
        self.not_after = cert.not_valid_after_utc.timestamp()

    def ms_left(self) -> int:
        return int((self.not_after - time.time()) * 1000)


# ---------------------------------------------------------------------------
# Interfaces (§9): names, versions and ranges
# ---------------------------------------------------------------------------

INTERFACE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}")
_NUMBER = r"(?:0|[1-9][0-9]*)"  # semver: no leading zeros
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*"
VERSION_RE = re.compile(rf"({_NUMBER})\.({_NUMBER})(?:\.({_NUMBER}))?(?:-({_PRE}))?")
# One comparator of a range, as Cargo's `semver` reads it: an optional operator,
# MAJOR[.MINOR[.PATCH[-PRE]]], where MINOR and PATCH may be a wildcard (`*`, `x`, `X`).
COMPARATOR_RE = re.compile(
    rf" *(>=|<=|=|>|<|~|\^)? *({_NUMBER})(?:\.([*xX]|{_NUMBER})(?:\.([*xX]|{_NUMBER})(?:-({_PRE}))?)?)? *"
)
MAX_COMPARATORS = 32  # as Cargo's `semver`
MAX_INTERFACE_ENTRIES = 256  # an implementation limit on `provides` and `requires`


def parse_version(text) -> tuple:
    """A semantic version (§9): `MAJOR.MINOR[.PATCH][-PRE]`, `MAJOR.MINOR` meaning
    `MAJOR.MINOR.0`; build metadata refused. -> (major, minor, patch, (pre identifiers))."""
    match = VERSION_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{shown(text, 64)} is not a semantic version such as 1.0.0")
    major, minor, patch = (int(match.group(i) or 0) for i in (1, 2, 3))
    if max(major, minor, patch) >= 1 << 64:
        raise ValueError(f"{shown(text, 64)} has a number over 64 bits")
    return major, minor, patch, tuple(match.group(4).split(".")) if match.group(4) else ()


def format_version(version: tuple) -> str:
    """A version in full, as ModuleAdmin/Status reports it (`1.0` -> `1.0.0`)."""
    major, minor, patch, pre = version
    return f"{major}.{minor}.{patch}" + (f"-{'.'.join(pre)}" if pre else "")


def compare_pre(a: tuple, b: tuple) -> int:
    """semver 2.0 precedence of two pre-releases: -1, 0 or 1. No pre-release ranks
    above any; numeric identifiers compare as numbers, below alphanumeric ones."""
    if a == b:
        return 0
    if not a or not b:
        return 1 if not a else -1
    for x, y in zip(a, b):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return -1 if len(a) < len(b) else 1


def parse_range(text) -> tuple:
    """A requirement in Cargo's syntax (§9): comparators separated by commas; `*`
    alone is any version. -> comparators (op, major, minor|None, patch|None, pre),
    op one of = > >= < <= ~ ^ and "" (a wildcard); () for `*`."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValueError(f"{shown(text, 64)} is not a version range")
    if text.strip(" ") in ("*", "x", "X"):
        return ()
    parts = text.split(",")
    if len(parts) > MAX_COMPARATORS:
        raise ValueError(f"{shown(text, 64)} has more than {MAX_COMPARATORS} comparators")
    comparators = []
    for part in parts:
        match = COMPARATOR_RE.fullmatch(part)
        if not match:
            raise ValueError(f"{shown(text, 64)} is not a version range such as >=1.0 or ^1.2")
        op, major, minor, patch, pre = match.groups()
        wild_minor, wild_patch = minor in ("*", "x", "X"), patch in ("*", "x", "X")
        if wild_minor and patch is not None and not wild_patch:
            raise ValueError(f"{shown(text, 64)}: a version part after a wildcard")
        if op is None:
            op = "" if wild_minor or wild_patch else "^"  # a bare version means ^
        minor = None if minor is None or wild_minor else int(minor)
        patch = None if minor is None or patch is None or wild_patch else int(patch)
        if max(int(major), minor or 0, patch or 0) >= 1 << 64:
            raise ValueError(f"{shown(text, 64)} has a number over 64 bits")
        comparators.append((op, int(major), minor, patch, tuple(pre.split(".")) if pre else ()))
    return tuple(comparators)


def format_range(comparators: tuple) -> str:
    """A range as ModuleAdmin/Status reports it: Cargo's `semver` normal form
    (`1.2` -> `^1.2`, `1.x` -> `1.*`, `>= 1.0,<2` -> `>=1.0, <2`)."""
    if not comparators:
        return "*"
    texts = []
    for op, major, minor, patch, pre in comparators:
        text = f"{op}{major}"
        if minor is not None:
            text += f".{minor}"
            if patch is not None:
                text += f".{patch}" + (f"-{'.'.join(pre)}" if pre else "")
            elif op == "":
                text += ".*"
        elif op == "":
            text += ".*"
        texts.append(text)
    return ", ".join(texts)


def version_order(version: tuple, comparator: tuple) -> int:
    """-1 or 1: `version` below or above `comparator`'s version, part by part; 0
    when equal, or when the comparator leaves out the part where they would differ."""
    _, c_major, c_minor, c_patch, c_pre = comparator
    major, minor, patch, pre = version
    if major != c_major:
        return -1 if major < c_major else 1
    if c_minor is None:
        return 0
    if minor != c_minor:
        return -1 if minor < c_minor else 1
    if c_patch is None:
        return 0
    if patch != c_patch:
        return -1 if patch < c_patch else 1
    return compare_pre(pre, c_pre)


def comparator_matches(comparator: tuple, version: tuple) -> bool:
    """One comparator of a range against a version, as Cargo's `semver` decides it."""
    op, c_major, c_minor, c_patch, c_pre = comparator
    major, minor, patch, pre = version
    exact = major == c_major and c_minor in (None, minor) and c_patch in (None, patch) and pre == c_pre
    if op in ("=", ""):
        return exact
    if op in (">", ">="):
        return version_order(version, comparator) > 0 or (op == ">=" and exact)
    if op in ("<", "<="):
        return version_order(version, comparator) < 0 or (op == "<=" and exact)
    if major != c_major:
        return False
    if op == "~":
        if c_minor is not None and minor != c_minor:
            return False
        if c_patch is not None and patch != c_patch:
            return patch > c_patch
        return compare_pre(pre, c_pre) >= 0
    # "^": no change to the leftmost non-zero part.
    if c_minor is None:
        return True
    if c_patch is None:
        return minor >= c_minor if c_major > 0 else minor == c_minor
    if minor != c_minor:
        return c_major > 0 and minor > c_minor
    if patch != c_patch:
        return (c_major > 0 or c_minor > 0) and patch > c_patch
    return compare_pre(pre, c_pre) >= 0


def range_matches(comparators: tuple, version: tuple) -> bool:
    """Whether `version` is in the range, with semver precedence: a pre-release is
    in it only if a comparator names a pre-release of the same MAJOR.MINOR.PATCH."""
    if not all(comparator_matches(c, version) for c in comparators):
        return False
    return not version[3] or any(c[1:4] == version[:3] and c[4] for c in comparators)


# ---------------------------------------------------------------------------
# The contract (§6.2)
# ---------------------------------------------------------------------------


class StartupError(Exception):
    """The module cannot start: one `error: …` line on stderr, exit status 1 (§6.1)."""


def parse_duration(value, name: str) -> int:
    """`250ms`, `30s`, `5m`, `1h` -> milliseconds."""
    match = DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise StartupError(f"{name} must be a duration like 250ms, 30s, 5m or 1h, not {value!r}")
    return int(match.group(1)) * DURATION_UNIT_MS[match.group(2)]


class Contract:
    KEYS = {
        "urn",
        "version",
        "type",
        "init",
        "methods",
        "max_lease",
        "startup_grace",
        "expired_grace",
        "termination_window",
        "provides",
        "requires",
    }

    def __init__(self, path: str):
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise StartupError(f"cannot read the contract {path}: {e}") from None
        for key in sorted(set(doc) - self.KEYS):
            log(f"contract {path}: ignoring unknown key {key!r}")
        self.urn = doc.get("urn")
        if not isinstance(self.urn, str) or not URN_RE.fullmatch(self.urn) or not self.urn.startswith("urn:anima:module:"):
            raise StartupError(f"contract {path}: urn must be urn:anima:module:NAME")
        self.version = doc.get("version", "")
        if not isinstance(self.version, str):
            raise StartupError(f"contract {path}: version must be a string")
        self.type = doc.get("type", EPHEMERAL)
        if self.type not in (EPHEMERAL, RESIDENT_PRIVATE, RESIDENT_SHARED):
            raise StartupError(f"contract {path}: type must be ephemeral, resident-private or resident-shared")
        self.init = doc.get("init", "core-started" if self.type == RESIDENT_PRIVATE else None)
        if self.type == RESIDENT_PRIVATE and self.init not in ("core-started", "pre-started"):
            raise StartupError(f"contract {path}: init must be core-started or pre-started")
        methods = doc.get("methods")
        if not isinstance(methods, list) or not all(isinstance(m, str) and METHOD_RE.fullmatch(m) for m in methods):
            raise StartupError(f"contract {path}: methods must be a list of /package.Service/Method paths")
        if len(set(methods)) != len(methods):
            raise StartupError(f"contract {path}: methods has duplicates")
        self.methods = tuple(methods)
        if "max_lease" not in doc:
            raise StartupError(f"contract {path}: max_lease is missing")
        self.max_lease_ms = parse_duration(doc["max_lease"], "max_lease")
        if self.max_lease_ms < MIN_TTL_MS:
            raise StartupError(f"contract {path}: max_lease must be at least {MIN_TTL_MS}ms")
        self.startup_grace_ms = parse_duration(doc.get("startup_grace", "10s"), "startup_grace")
        self.expired_grace_ms = parse_duration(doc.get("expired_grace", "0s"), "expired_grace")
        self.termination_window_ms = parse_duration(doc.get("termination_window", "2s"), "termination_window")
        # §9: the interfaces provided, [(name, version)], and required, [(name, range)].
        self.provides = self.interfaces(doc, "provides", "version", parse_version, path)
        self.requires = self.interfaces(doc, "requires", "version", parse_range, path)
        provided = set()
        for name, version in self.provides:
            if (name, version) in provided:
                raise StartupError(f"contract {path}: provides {name} {format_version(version)} twice")
            provided.add((name, version))
        required = set()
        for name, comparators in self.requires:
            if name in required:
                raise StartupError(f"contract {path}: requires {name} twice")
            required.add(name)
            own = [v for n, v in self.provides if n == name and range_matches(comparators, v)]
            if own:
                raise StartupError(
                    f"contract {path}: requires {name} {format_range(comparators)}, "
                    f"which it provides itself ({format_version(own[0])}); remove the requirement"
                )

    @staticmethod
    def interfaces(doc: dict, key: str, field: str, parse, path: str) -> list[tuple[str, tuple]]:
        """`provides` or `requires` (§6.2, §9): `[{ interface = "NAMESPACE/NAME", version = … }, …]`,
        each entry exactly those two keys; `parse` reads the version (or range)."""
        entries = doc.get(key, [])
        if not isinstance(entries, list) or len(entries) > MAX_INTERFACE_ENTRIES:
            raise StartupError(f'contract {path}: {key} must be a list of {{ interface = "NAMESPACE/NAME", {field} = … }}')
        out = []
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) != {"interface", field}:
                raise StartupError(f"contract {path}: each {key} entry has exactly the keys interface and {field}")
            name = entry["interface"]
            if not isinstance(name, str) or not INTERFACE_RE.fullmatch(name):
                raise StartupError(
                    f"contract {path}: {key}: {shown(name, 140)} is not NAMESPACE/NAME "
                    "(each part 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)"
                )
            try:
                out.append((name, parse(entry[field])))
            except ValueError as e:
                raise StartupError(f"contract {path}: {key} {name}: {e}") from None
        return out


# ---------------------------------------------------------------------------
# Leases and control streams
# ---------------------------------------------------------------------------


class Lease:
    """The module's copy of one lease (§3). Mutated only under Module.lock."""

    _ids = itertools.count(1)

    def __init__(self, lid, conn, core, scope, keys, expires_at, session):
        self.serial = next(Lease._ids)  # tenant state is keyed by this, never by the Core-chosen lid
        self.lid = lid
        self.conn = conn  # the connection (context.peer()) whose control stream opened it
        self.core = core  # the Core's Identity
        self.scope = list(scope)
        self.key, self.renewal_key = keys  # the per-call proof key and the renewal key (§3.3)
        self.expires_at = expires_at  # time.monotonic() seconds (§3.2)
        self.session = session
        self.state = "active"
        self.end_cause = None  # "expired" or why it was revoked
        self.core_seq = 0  # highest control `seq` received from the Core (§3.4)
        self.own_seq = 0  # our control `seq`
        self.replay_high = 0  # highest proof seq accepted (§4)
        self.replay_bits = 0  # bit i set: replay_high - i was accepted
        self.waiters: set[threading.Event] = set()  # calls holding on this lease (§8 Touch)

    def next_seq(self) -> int:
        self.own_seq += 1
        return self.own_seq

    def call_reason(self) -> str:
        """How a call on this lease is refused once it has ended (§4)."""
        return "LEASE_EXPIRED" if self.end_cause == "expired" else "LEASE_REVOKED"

    def accept_proof_seq(self, seq: int) -> bool:
        """§4: each seq once, within a window of 1024 below the highest seen (we accept
        highest-1023 .. highest, and anything higher)."""
        if seq > self.replay_high:
            shift = seq - self.replay_high
            self.replay_bits = ((self.replay_bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self.replay_high = seq
            return True
        offset = self.replay_high - seq
        if offset >= REPLAY_WINDOW or self.replay_bits >> offset & 1:
            return False
        self.replay_bits |= 1 << offset
        return True


_CLOSE = object()  # queue sentinel: the module closes its half of the control stream


class Session:
    """One LeaseControl/Control stream. Inbound frames are read by a thread of their
    own; outbound frames go through `out`, drained by the gRPC handler thread."""

    def __init__(self, module: "Module", context, conn: str, peer: Identity | None):
        self.module, self.context, self.conn, self.peer = module, context, conn, peer
        self.out: queue.Queue = queue.Queue()
        self.state = "awaiting-offer"  # -> "verifying" -> "open" -> "closed" (under Module.lock)
        self.opened = time.monotonic()
        self.lease: Lease | None = None
        self.finished = threading.Event()

    # Both under Module.lock, so frames keep the order of the state changes.
    def send(self, frame: bytes) -> None:
        if self.state != "closed":
            self.out.put(frame)

    def close(self, frame: bytes | None = None) -> None:
        """Sends `frame` (a refuse or revoke) if any, then closes our half (§2.6)."""
        if self.state == "closed":
            return
        if frame is not None:
            self.out.put(frame)
        self.state = "closed"
        self.out.put(_CLOSE)

    def responses(self):
        """The response iterator gRPC drains. Every wait is bounded."""
        try:
            while True:
                timeout = 1.0
                with self.module.lock:
                    if self.state == "awaiting-offer":
                        left = self.opened + OFFER_TIMEOUT_S - time.monotonic()
                        if left <= 0:  # §2 step 1
                            log(f"{self.conn}: no offer within {OFFER_TIMEOUT_S:g} s")
                            self.close(frame_refuse("PROTOCOL_VIOLATION", "no offer within 5 s of the stream opening"))
                        else:
                            timeout = min(timeout, left)
                try:
                    item = self.out.get(timeout=timeout)
                except queue.Empty:
                    if not self.context.is_active():
                        return
                    continue
                if item is _CLOSE:
                    return
                yield item
        finally:
            self.module.on_stream_gone(self)


# ---------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------


class Module:
    def __init__(self, contract: Contract, cert_pem: bytes, key_pem: bytes, ca_pem: bytes, env: dict):
        self.contract = contract
        self.cert_pem, self.key_pem, self.ca_pem = cert_pem, key_pem, ca_pem
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            self.identity = Identity(cert)
            self.signer = SigningKey(load_private_key(key_pem))
        except (ValueError, TypeError) as e:
            raise StartupError(f"unusable module certificate or key: {e}") from None
        if not self.signer.public_matches(cert.public_key()):
            raise StartupError("ANIMA_KEY is not the key of ANIMA_CERT")
        if self.identity.urn != contract.urn:
            raise StartupError(f"the certificate is {self.identity.urn} but the contract declares {contract.urn}")
        if self.identity.ms_left() <= 0:
            raise StartupError("the module certificate has expired")

        # §6.3: a Type I/II module is bound to ANIMA_CORE_URN, or (unset) to the first Core it grants.
        core_urn = env.get("ANIMA_CORE_URN", "").strip()
        if core_urn and not (URN_RE.fullmatch(core_urn) and core_urn.startswith("urn:anima:core:")):
            raise StartupError(f"ANIMA_CORE_URN is not a Core URN: {shown(core_urn)}")
        self.bound_core = core_urn if contract.type != RESIDENT_SHARED and core_urn else None
        self.operators = set()
        for entry in env.get("ANIMA_OPERATORS", "").split(","):
            entry = entry.strip()
            if entry:
                if not URN_RE.fullmatch(entry):
                    raise StartupError(f"ANIMA_OPERATORS: not an identity URN: {shown(entry)}")
                self.operators.add(entry)

        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)  # lifecycle changes wake the main loop
        self.leases: dict[str, Lease] = {}  # connection -> its active lease
        self.tombstones: collections.OrderedDict[str, tuple[Lease, float]] = collections.OrderedDict()
        self.sessions: set[Session] = set()
        self.tenants: dict[int, int] = {}  # Lease.serial -> touches (§8 tenant state)
        self.executions = 0  # §8 process-wide counters
        self.committed = 0
        self.phase = "awaiting-lease"  # §6.4
        self.terminating = False
        self.shutdown_reason: str | None = None
        self.grace_until = 0.0
        self.started = time.monotonic()
        self.identity_cache: dict[bytes, Identity | None] = {}
        self.server = None
        self.env = dict(env)
        # PYMODULE_KV_SELFTEST=1: after the first lease, call kv through the Core once (§10).
        self.kv_selftest_pending = env.get("PYMODULE_KV_SELFTEST", "") == "1"

        # The capabilities this module serves. §6.1: they must equal the contract's `methods`.
        self.capabilities = {TOUCH_METHOD: self.probe_touch, READ_METHOD: self.probe_read}
        extra = sorted(set(self.capabilities) - set(contract.methods))
        missing = sorted(set(contract.methods) - set(self.capabilities))
        if extra or missing:
            parts = [f"served but not declared: {', '.join(extra)}"] if extra else []
            parts += [f"declared but not served: {', '.join(missing)}"] if missing else []
            raise StartupError("the served methods differ from the contract's methods; " + "; ".join(parts))

    @property
    def resident(self) -> bool:
        return self.contract.type != EPHEMERAL

    # -- the server ---------------------------------------------------------

    def listen(self, address: str) -> str:
        """Starts the gRPC server over mutual TLS (§1); returns the ip:port it listens on."""
        creds = grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem, require_client_auth=True
        )
        options = [
            # §1 keepalive: ping every 5 s, a ping unanswered for 5 s kills the connection.
            ("grpc.keepalive_time_ms", 5000),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # ... and accept the Core's pings at that rate: gRPC C-core's default policy
            # would answer pings every 5 s on an idle stream with GOAWAY (too_many_pings).
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_metadata_size", 16 * 1024),
            ("grpc.so_reuseport", 0),  # never share the port with another process
        ]
        gate, unary, stream = self.gated, grpc.unary_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
        table = {
            CONTROL_METHOD: stream(gate(self.handle_control)),
            STATUS_METHOD: unary(gate(self.unary(self.admin_status))),
            SHUTDOWN_METHOD: unary(gate(self.unary(self.admin_shutdown))),
            HEALTH_CHECK_METHOD: unary(gate(self.unary(self.health_check))),
        }
        for method, body in self.capabilities.items():
            table[method] = unary(gate(self.unary(self.capability(method, body))))
        unknown = stream(gate(self.unknown_method))

        class Router(grpc.GenericRpcHandler):
            def service(self, details):
                return table.get(details.method, unknown)

        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=RPC_WORKERS, thread_name_prefix="anima-rpc"),
            handlers=[Router()],
            options=options,
            maximum_concurrent_rpcs=RPC_WORKERS,  # beyond this: RESOURCE_EXHAUSTED at once, never a silent queue
        )
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise StartupError(f"ANIMA_LISTEN must be host:port, not {shown(address)}")
        # gRPC C-core logs a bind failure to fd 2 itself; §6.1 wants exactly one `error:`
        # line, so its words are captured and folded into ours.
        with tempfile.TemporaryFile() as captured:
            saved = os.dup(2)
            sys.stderr.flush()
            os.dup2(captured.fileno(), 2)
            try:
                bound = self.server.add_secure_port(address, creds)
                failure = None
            except RuntimeError as e:
                bound, failure = 0, str(e)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            captured.seek(0)
            grpc_said = " ".join(captured.read(4096).decode("utf-8", "replace").split())
        if not bound:
            raise StartupError(f"cannot listen on {address}: {grpc_said or failure or 'gRPC refused the address'}")
        self.server.start()
        return f"{host}:{bound}"

    def gated(self, behavior):
        """§1 refuses, during the TLS handshake, a certificate without exactly one anima
        URN. grpcio's server API has no hook there (it only checks the chain against
        ANIMA_CA), so the nearest we can do is to refuse every RPC from such a peer, and
        from module identities, which never lease or administer a module."""

        def handler(request, context):
            peer = self.peer_identity(context)
            if peer is None or peer.kind == "module":
                what = "a module" if peer is not None else "a certificate without exactly one anima URN"
                abort_refused(context, Refused("IDENTITY_MISMATCH", f"{what} is not served"))
            return behavior(request, context)

        return handler

    def unary(self, body):
        """Wraps a unary handler: refusals become statuses with ErrorInfo (§5), malformed
        requests INVALID_ARGUMENT. Requests and responses are raw protobuf bytes."""

        def handler(request: bytes, context):
            try:
                return body(request, context)
            except Refused as refusal:
                abort_refused(context, refusal)  # raises
            except WireError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {e}")

        return handler

    def peer_identity(self, context) -> Identity | None:
        """The mTLS peer, from its leaf certificate (verified against the CA by gRPC)."""
        try:
            pems = context.auth_context().get("x509_pem_cert") or []
        except Exception:  # noqa: BLE001 - no auth context at all
            return None
        if len(pems) != 1:
            return None
        pem = bytes(pems[0])
        with self.lock:
            if pem in self.identity_cache:
                return self.identity_cache[pem]
        try:
            identity = Identity(x509.load_pem_x509_certificate(pem))
        except Exception as e:  # noqa: BLE001 - a hostile certificate must not crash us
            log(f"{context.peer()}: unusable peer certificate: {shown(str(e))}")
            identity = None
        with self.lock:
            if len(self.identity_cache) >= 256:
                self.identity_cache.clear()
            self.identity_cache[pem] = identity
        return identity

    # -- lease bookkeeping (all under self.lock) -----------------------------

    def _lease_on(self, conn: str) -> Lease | None:
        """The lease the connection holds: active, or ended (then calls on it are answered
        LEASE_EXPIRED / LEASE_REVOKED, §4, until a new lease is granted on it, §2). gRPC's
        Python API names a connection only by `context.peer()` (ip:port) and does not say when
        one closes, so an ended lease is remembered for TOMBSTONE_TTL_S, by an ip:port that a
        new connection may reuse meanwhile (loopback reuses source ports within seconds). So
        an ended lease never blocks an offer (`_live_lease_on`), and answers only calls that
        carry a proof made under it (`admit`). A live lease's control stream is still open, and
        so is its connection: its ip:port is its own."""
        lease = self.leases.get(conn)
        if lease is not None:
            return lease
        entry = self.tombstones.get(conn)
        if entry is not None:
            if time.monotonic() < entry[1]:
                return entry[0]
            del self.tombstones[conn]
        return None

    def _live_lease_on(self, conn: str) -> Lease | None:
        """The connection's live lease, the only one that refuses an offer LEASE_EXISTS
        (§2 *One lease per connection*, §3.1 step 0). An ended lease still attached to the
        connection (see `_lease_on`) does not: an offer on a new control stream is accepted
        like a first one and its lease replaces the ended one. Nor does the ended lease of
        an earlier connection whose `context.peer()` a new connection reuses."""
        lease = self.leases.get(conn)
        return lease if lease is not None and self._valid(lease) else None

    def _valid(self, lease: Lease, now: float | None = None) -> bool:
        """§3.2: the lease is valid until its own monotonic expiry; ends it when past."""
        if lease.state != "active":
            return False
        if (time.monotonic() if now is None else now) >= lease.expires_at:
            self._end(lease, "expired")
            return False
        return True

    def _end(self, lease: Lease, cause: str, frame: bytes | None = None) -> None:
        """Ends a lease: its calls stop at once, its tenant state is deleted (§6.3, §8),
        its stream sends `frame` (a revoke or refuse), if any, and closes (§2.6)."""
        if lease.state != "active":
            return
        lease.state, lease.end_cause = "ended", cause
        if self.leases.get(lease.conn) is lease:
            del self.leases[lease.conn]
        self.tombstones[lease.conn] = (lease, time.monotonic() + TOMBSTONE_TTL_S)
        self.tombstones.move_to_end(lease.conn)
        while len(self.tombstones) > MAX_TOMBSTONES:
            self.tombstones.popitem(last=False)
        self.tenants.pop(lease.serial, None)
        for waiter in lease.waiters:
            waiter.set()
        lease.session.close(frame)
        log(f"lease {lease.lid} of {lease.core.urn} ended: {cause}")
        if not self.leases and not self.terminating:
            if self.contract.type == EPHEMERAL:
                # §6.3 Type I zero-lease: expired grace, then the termination window.
                self.phase = "expired-grace"
                self.grace_until = time.monotonic() + self.contract.expired_grace_ms / 1000
            else:
                self.phase = "standby"
        self.cond.notify_all()

    def _revoke_frame(self, lease: Lease, reason: str, detail: str) -> bytes:
        """A module-sent revoke (§3.4)."""
        claims = {
            "typ": "anima-revoke+v1",
            "lid": lease.lid,
            "seq": lease.next_seq(),
            "iat": int(time.time()),
            "reason": reason,
            "detail": detail,
        }
        return frame_token("revoke", jws_sign(self.signer, claims))

    def _check_may_lease(self, core: Identity | None) -> None:
        """§3.1 step 0 (§6.3)."""
        if core is None or core.kind != "core":
            raise Refused("IDENTITY_MISMATCH", "only a Core may lease a module")
        if self.contract.type != RESIDENT_SHARED and self.bound_core and core.urn != self.bound_core:
            raise Refused("WRONG_CORE", f"this module is bound to {self.bound_core}")
        if self.terminating:
            raise Refused("SHUTDOWN", "this module is terminating")

    # -- LeaseControl/Control (§2, §3) --------------------------------------

    def handle_control(self, request_iterator, context):
        conn = context.peer()
        session = Session(self, context, conn, self.peer_identity(context))
        with self.lock:
            self.sessions.add(session)
        # When the RPC ends for any reason (our close, the Core's cancel, a dead
        # connection found by keepalive), the lease ends with it (§2.6).
        context.add_callback(lambda: self.on_stream_gone(session))
        reader = threading.Thread(
            target=self.read_frames, args=(session, request_iterator), name="anima-control-reader", daemon=True
        )
        reader.start()
        return session.responses()

    def on_stream_gone(self, session: Session) -> None:
        with self.lock:
            if session.lease is not None and session.lease.state == "active":
                self._end(session.lease, "connection-lost")  # CONNECTION_LOST
            session.close()
            self.sessions.discard(session)
            session.finished.set()

    def read_frames(self, session: Session, request_iterator) -> None:
        try:
            for raw in request_iterator:
                if not self.on_frame(session, raw, time.monotonic()):
                    break
            else:
                # The Core closed its half cleanly, with no revoke or refuse before it:
                # its copy expired, so this one ends as expired whatever its own timer
                # says (§2 *Which ending*), and calls in flight get LEASE_EXPIRED. A
                # broken stream raises instead, and is CONNECTION_LOST below.
                with self.lock:
                    if session.lease is not None and session.lease.state == "active":
                        self._end(session.lease, "expired")
        except Exception as e:  # noqa: BLE001 - grpc.RpcError when the stream breaks; never crash on a peer
            if not isinstance(e, grpc.RpcError):
                log(f"{session.conn}: control stream reader failed: {e!r}")
        # The stream is over either way: a lease still live ends (§2.6).
        self.on_stream_gone(session)

    def on_frame(self, session: Session, raw: bytes, received: float) -> bool:
        """Handles one inbound frame; False when the stream is done."""
        try:
            kind, value = decode_frame(raw)
        except WireError as e:
            refusal = Refused("PROTOCOL_VIOLATION", f"malformed control frame: {e}")
            kind = value = None
        with self.lock:
            state, lease = session.state, session.lease
            if state == "closed":
                return False
            if kind is None:
                self._refuse(session, refusal)
                return False
            if state == "awaiting-offer":
                if kind != "offer":
                    if kind != "refuse":
                        self._refuse(session, Refused("PROTOCOL_VIOLATION", f"the first frame must be an offer, not {kind}"))
                    session.close()
                    return False
                session.state = "verifying"
        if state == "awaiting-offer":
            self.on_offer(session, value, received)
        else:
            self.on_control_step(session, lease, kind, value, received)
        return session.state != "closed"

    def _refuse(self, session: Session, refusal: Refused) -> None:
        """Sends `refuse`, which ends the lease on both sides (§2.5), and closes."""
        log(f"{session.conn}: refusing: {refusal.reason}: {refusal.detail}")
        frame = frame_refuse(refusal.reason, refusal.detail)
        if session.lease is not None and session.lease.state == "active":
            self._end(session.lease, f"refused by the module ({refusal.reason})", frame)
        else:
            session.close(frame)

    def check_offer(self, session: Session, jws: str) -> dict:
        """§3.1 steps 0-7, in the documented order, with the documented reasons."""
        with self.lock:
            self._check_may_lease(session.peer)  # 0
            if self._live_lease_on(session.conn) is not None:  # 0: §2, before the token
                raise Refused("LEASE_EXISTS", "this connection already holds a lease")
        return check_offer_token(jws, session.peer, self.identity, self.contract.methods, time.time())

    def on_offer(self, session: Session, jws: str, received: float) -> None:
        try:
            claims = self.check_offer(session, jws)
            lease, grant = self.make_grant(session, jws, claims, received)
            with self.lock:
                # Re-checked atomically with the binding: another stream may have bound
                # the module, or shutdown begun, while we verified.
                self._check_may_lease(session.peer)
                if self._live_lease_on(session.conn) is not None:
                    raise Refused("LEASE_EXISTS", "this connection already holds a lease")
                if session.state != "verifying":
                    return  # the stream went away meanwhile
                if self.contract.type != RESIDENT_SHARED and not self.bound_core:
                    self.bound_core = lease.core.urn  # §6.1: bound for the life of the process
                self.leases[session.conn] = lease
                self.tombstones.pop(session.conn, None)
                session.lease, session.state = lease, "open"
                self.phase = "leased"
                # Registered before the grant leaves, so a call right after it finds the lease.
                session.send(frame_token("grant", grant))
                self.cond.notify_all()
                selftest, self.kv_selftest_pending = self.kv_selftest_pending, False
            ttl_ms = round((lease.expires_at - received) * 1000)
            log(f"lease {lease.lid} granted to {lease.core.urn} on {session.conn}: {ttl_ms} ms, scope {lease.scope}")
            if selftest:
                threading.Thread(
                    target=kv_selftest, args=(self, lease.core.urn), name="pymodule-kv-selftest", daemon=True
                ).start()
        except Refused as refusal:
            with self.lock:
                self._refuse(session, refusal)

    def make_grant(self, session: Session, offer: str, claims: dict, received: float) -> tuple[Lease, str]:
        """The grant (§3.1) and the per-call key (§3.3)."""
        core = session.peer
        # Granted TTL: min(requested, max_lease, time left on either certificate).
        ttl_ms = min(claims["ttl_ms"], self.contract.max_lease_ms, self.identity.ms_left(), core.ms_left())
        if ttl_ms < MIN_TTL_MS:
            raise Refused("BAD_TOKEN", "a certificate expires too soon for a lease")
        kx_secret = x25519.X25519PrivateKey.generate()  # ephemeral: one per lease
        grant, keys = grant_token(self.signer, offer, claims, core, self.identity, ttl_ms, kx_secret, int(time.time() * 1000))
        lease = Lease(claims["lid"], session.conn, core, claims["scope"], keys, received + ttl_ms / 1000, session)
        return lease, grant

    def verify_step(self, lease: Lease, jws: str, typ: str, required: set[str], optional=frozenset()) -> dict:
        """A Core control token (§3.4): signature, claims, lease id, iat; then its `seq`
        must be above every earlier one from the Core."""
        claims = check_step_token(jws, lease.core.key, lease.renewal_key, typ, lease.lid, required, optional)
        with self.lock:
            if claims["seq"] <= lease.core_seq:
                raise Refused("PROTOCOL_VIOLATION", f"control seq {claims['seq']} is not above {lease.core_seq}")
            lease.core_seq = claims["seq"]
        if claims["typ"] != typ:
            raise Refused("PROTOCOL_VIOLATION", f"a {claims['typ']} token in a {typ} frame")
        return claims

    def on_control_step(self, session: Session, lease: Lease, kind: str, value, received: float) -> None:
        """§2 step 4 and §3.4: renew, rescope, revoke, refuse after the handshake."""
        try:
            if kind == "refuse":
                reason, detail = value
                with self.lock:
                    self._end(lease, f"refused by the Core ({shown(reason, 40)}: {shown(detail)})")
            elif kind == "revoke":
                claims = self.verify_step(lease, value, "anima-revoke+v1", {"reason", "detail"}, frozenset())
                claim_str(claims, "reason")
                claim_str(claims, "detail")
                with self.lock:
                    self._end(lease, f"revoked by the Core ({shown(claims['reason'], 40)})")
            elif kind == "renew":
                self.on_renew(lease, value, received)
            elif kind == "rescope":
                self.on_rescope(lease, value)
            elif kind == "offer":
                # A second offer on this stream: step 0 refuses it LEASE_EXISTS while
                # the lease is live (§3.1), and the refusal ends the lease (§2.5).
                self.check_offer(session, value)
                raise Refused("LEASE_EXISTS", "this connection already holds a lease")
            else:
                raise Refused("PROTOCOL_VIOLATION", f"a Core does not send {kind}")
        except Refused as refusal:
            with self.lock:
                self._refuse(session, refusal)

    def on_renew(self, lease: Lease, jws: str, received: float) -> None:
        claims = self.verify_step(lease, jws, "anima-renew+v1", {"ttl_ms"})
        requested = claim_int(claims, "ttl_ms")
        if requested < MIN_TTL_MS:
            raise Refused("BAD_TOKEN", f"ttl_ms is below {MIN_TTL_MS}")
        # min(requested, max_lease), and never past either certificate (`certificate-expiry`).
        granted = min(requested, self.contract.max_lease_ms, self.identity.ms_left(), lease.core.ms_left())
        if granted < MIN_TTL_MS:
            raise Refused("BAD_TOKEN", "a certificate expires too soon for a renewed lease")  # §3.4
        with self.lock:
            if not self._valid(lease):
                return  # it ended first (the Core gives up at expiry); the stream is closing
            lease.expires_at = received + granted / 1000  # runs from receipt (§3.4)
            renewed = renewed_token(lease.renewal_key, lease.lid, lease.next_seq(), claims["seq"], granted, int(time.time() * 1000))
            lease.session.send(frame_token("renewed", renewed))
            self.cond.notify_all()

    def on_rescope(self, lease: Lease, jws: str) -> None:
        claims = self.verify_step(lease, jws, "anima-rescope+v1", {"scope"})
        scope = claim_scope(claims)
        undeclared = [m for m in scope if m not in self.contract.methods]
        if undeclared:
            raise Refused("SCOPE_DENIED", f"undeclared methods: {shown(', '.join(undeclared))}")
        with self.lock:
            if not self._valid(lease):
                return
            lease.scope = list(scope)  # applies to the next call
            now = time.monotonic()
            left_ms = max(0, int((lease.expires_at - now) * 1000))
            now_ms = int(time.time() * 1000)
            claims = {
                "typ": "anima-rescoped+v1",
                "lid": lease.lid,
                "seq": lease.next_seq(),
                "iat": now_ms // 1000,
                "re": claims["seq"],
                "ttl_ms": left_ms,
                "exp": now_ms // 1000 + left_ms // 1000,
                "scope": lease.scope,
            }
            lease.session.send(frame_token("rescoped", jws_sign(self.signer, claims)))
        log(f"lease {lease.lid} rescoped to {scope}")

    # -- capability calls (§4) ----------------------------------------------

    def capability(self, method: str, body):
        def handler(request: bytes, context):
            lease = self.admit(method, context)
            return body(lease, request, context)

        return handler

    def admit(self, method: str, context) -> Lease:
        """§4: the method is declared (routing did that), the connection holds a lease, the
        lease is valid, the proof is present and genuine, not replayed, and in scope."""
        peer = self.peer_identity(context)
        proofs = [v for k, v in context.invocation_metadata() if k == "anima-proof"]
        with self.lock:
            lease = self._lease_on(context.peer())
            if lease is not None and (peer is None or peer.fingerprint != lease.core.fingerprint):
                lease = None  # a lease is the connection's and its Core's, nobody else's
            if lease is not None and lease.state != "active" and proof_seq(proofs, lease.key, method) is None:
                # An ended lease is remembered by ip:port, which a new connection may reuse
                # (see _lease_on): it answers only the calls that prove they are under it.
                lease = None
            if lease is None:
                if self.resident and not self.leases:
                    raise Refused("STANDBY", "this module has no lease and takes no calls")
                raise Refused("NO_LEASE", "this connection holds no lease")
            if not self._valid(lease):
                raise Refused(lease.call_reason(), "the lease has ended", lease.lid)
        if not proofs:
            raise Refused("NO_LEASE", "the call carries no anima-proof", lease.lid)
        seq = proof_seq(proofs, lease.key, method)
        genuine = seq is not None
        with self.lock:
            if not self._valid(lease):
                raise Refused(lease.call_reason(), "the lease has ended", lease.lid)
            if not genuine:
                # Only the Core can send on this connection: a bad proof revokes the lease.
                self._end(lease, "bad proof", self._revoke_frame(lease, "BAD_PROOF", f"a bad proof on {method}"))
                raise Refused("BAD_PROOF", "the proof is malformed or does not verify", lease.lid)
            if not lease.accept_proof_seq(seq):
                self._end(lease, "replayed proof", self._revoke_frame(lease, "PROOF_REPLAYED", f"seq {seq} on {method}"))
                raise Refused("PROOF_REPLAYED", f"proof seq {seq} was used already or is too old", lease.lid)
            if method not in lease.scope:
                raise Refused("SCOPE_DENIED", f"{method} is outside the lease's scope", lease.lid)
        return lease

    def unknown_method(self, request_iterator, context):
        """Any method not served: UNIMPLEMENTED with UNKNOWN_METHOD (§4, §5). A stream-stream
        handler answers every call shape; the request is never read."""
        with self.lock:
            lease = self._lease_on(context.peer())
        abort_refused(context, Refused("UNKNOWN_METHOD", "the method is not declared", lease.lid if lease else None))

    # -- the conformance probe (§8) -----------------------------------------

    def probe_touch(self, lease: Lease, request: bytes, context) -> bytes:
        with self.lock:
            self.executions += 1  # the handler body's first act
        hold_ms = last(dec_fields(request), 1, 0) or 0
        if hold_ms > MAX_HOLD_MS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hold_ms is at most {MAX_HOLD_MS}")
        # Hold, ending the wait at once if the lease ends (Module._end sets `wake`) or
        # the caller goes away. The wait also wakes at the lease's expiry, which a
        # renewal may push back, hence the loop.
        wake = threading.Event()
        context.add_callback(wake.set)
        with self.lock:
            lease.waiters.add(wake)
        done_at = time.monotonic() + hold_ms / 1000
        try:
            while context.is_active():
                now = time.monotonic()
                with self.lock:
                    if not self._valid(lease, now):
                        break
                    expires_at = lease.expires_at
                if now >= done_at:
                    break
                wake.wait(min(done_at, expires_at) - now)
        finally:
            with self.lock:
                lease.waiters.discard(wake)
        with self.lock:
            # Commit only if the lease is still valid, atomically with that check.
            if context.is_active() and self._valid(lease):
                touches = self.tenants.get(lease.serial, 0) + 1
                self.tenants[lease.serial] = touches
                self.committed += 1
                return probe_reading(touches, self.executions, self.committed)
            reason = lease.call_reason() if lease.state != "active" else None
        if reason is None:  # the caller left (deadline, cancel): abandoned, nothing committed
            context.abort(grpc.StatusCode.CANCELLED, "the call was abandoned by its caller")
        raise Refused(reason, "the lease ended while the call ran; nothing was committed", lease.lid)

    def probe_read(self, lease: Lease, request: bytes, context) -> bytes:
        dec_fields(request)  # ReadRequest is empty; only check it is protobuf
        with self.lock:
            if not self._valid(lease):
                raise Refused(lease.call_reason(), "the lease has ended", lease.lid)
            return probe_reading(self.tenants.get(lease.serial, 0), self.executions, self.committed)

    # -- ModuleAdmin (§6.4) and health --------------------------------------

    def admin_status(self, request: bytes, context) -> bytes:
        peer = self.peer_identity(context)
        if peer is None or peer.kind not in ("core", "user"):
            raise Refused("IDENTITY_MISMATCH", "Status is for Cores and users")
        dec_fields(request)
        with self.lock:
            for lease in list(self.leases.values()):
                self._valid(lease)  # so the count never includes an expired lease
            c = self.contract
            return (
                enc_str(1, c.urn)
                + enc_str(2, c.version)
                + enc_str(3, c.type)
                + enc_str(4, self.phase)
                + enc_uint(5, os.getpid())
                + enc_uint(6, len(self.leases))
                + enc_str(7, self.bound_core or "")
                + b"".join(enc_str(8, m) for m in c.methods)
                + enc_uint(9, c.max_lease_ms)
                # §9: "NAME VERSION" and "NAME RANGE", in the contract's order, in the normal
                # form a Core writes its own copy in (it compares them as text).
                + b"".join(enc_str(10, f"{n} {format_version(v)}") for n, v in c.provides)
                + b"".join(enc_str(11, f"{n} {format_range(r)}") for n, r in c.requires)
            )

    def admin_shutdown(self, request: bytes, context) -> bytes:
        peer = self.peer_identity(context)
        reason = dec_string(dec_fields(request), 1, MAX_TEXT)
        with self.lock:
            allowed = peer is not None and (
                peer.urn in self.operators
                or (self.contract.type != RESIDENT_SHARED and self.bound_core is not None and peer.urn == self.bound_core)
            )
        if not allowed:
            raise Refused("WRONG_CORE", "only the module's Core or an operator may shut it down")
        self.request_shutdown(f"ModuleAdmin/Shutdown from {peer.urn}: {shown(reason)}")
        return b""  # ShutdownReply{}; the server lets it out before stopping

    def health_check(self, request: bytes, context) -> bytes:
        service = dec_string(dec_fields(request), 1, MAX_TEXT)
        served = {"", "anima.v1.LeaseControl", "anima.v1.ModuleAdmin", "anima.v1.Probe", "grpc.health.v1.Health"}
        if service not in served:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return enc_uint(1, 1)  # HealthCheckResponse{status: SERVING}

    # -- lifecycle (§6.3) ---------------------------------------------------

    def request_shutdown(self, reason: str) -> None:
        with self.lock:
            if self.shutdown_reason is None:
                self.shutdown_reason = reason
            self.cond.notify_all()

    def run(self) -> None:
        """The main thread: ends leases at their expiry, runs the Type I clock, and stops the
        process on shutdown. Sleeps on a condition until the next deadline or change."""
        grace = self.contract.startup_grace_ms / 1000
        with self.cond:
            while True:
                now = time.monotonic()
                for lease in list(self.leases.values()):
                    self._valid(lease, now)  # ends it at its expiry (§3.2)
                if self.shutdown_reason is not None:
                    log(f"shutting down: {self.shutdown_reason}")
                    code = 0
                    break
                deadlines = [lease.expires_at for lease in self.leases.values()]
                if self.contract.type == EPHEMERAL:
                    if self.phase == "awaiting-lease":
                        if now >= self.started + grace:
                            log(f"no lease within the startup grace ({self.contract.startup_grace_ms} ms)")
                            code = 3
                            break
                        deadlines.append(self.started + grace)
                    elif self.phase == "expired-grace":
                        if now >= self.grace_until:
                            log("expired grace over, terminating")
                            code = 0
                            break
                        deadlines.append(self.grace_until)
                timeout = min(deadlines, default=now + 60) - now
                self.cond.wait(timeout=min(max(timeout, 0.0), 60.0))
            # From here on every offer is refused SHUTDOWN (§3.1 step 0).
            self.terminating, self.phase = True, "terminating"
        self.stop(code)

    def stop(self, code: int) -> None:
        """Revokes every lease with SHUTDOWN (§6.4), runs the cleanup hook within the
        termination window, stops the server and exits with `code`."""
        with self.lock:
            self.terminating, self.phase = True, "terminating"
            for lease in list(self.leases.values()):
                self._end(lease, "shutdown", self._revoke_frame(lease, "SHUTDOWN", "the module is shutting down"))
            sessions = list(self.sessions)
        deadline = time.monotonic() + 2.0
        for session in sessions:  # let the revokes reach the Cores
            session.finished.wait(max(0.0, deadline - time.monotonic()))
        hook = threading.Thread(target=self.cleanup_hook, name="anima-cleanup", daemon=True)
        hook.start()
        hook.join(self.contract.termination_window_ms / 1000)
        if hook.is_alive():
            log("the cleanup hook outlived the termination window")
        if self.server is not None:
            self.server.stop(grace=1.0).wait(timeout=3.0)
        log(f"exiting with status {code}")
        sys.stderr.flush()
        os._exit(code)

    def cleanup_hook(self) -> None:
        """This module's cleanup: drop all tenant state (already empty once leases ended)."""
        with self.lock:
            self.tenants.clear()
        log("cleanup hook done")


def b64url_decode_or_none(text: str) -> bytes | None:
    try:
        return b64url_decode(text)
    except ValueError:
        return None


def lease_keys(shared: bytes, offer: str, grant: str, lid_raw: bytes) -> tuple[bytes, bytes]:
    """§3.3: the per-call proof key and the renewal key, each HKDF-SHA256(salt = SHA-256(offer)
    || SHA-256(grant), ikm = X25519 secret, info = "anima/v1 proof key " || lid, resp.
    "anima/v1 renewal key " || lid, L = 32)."""
    salt = hashlib.sha256(offer.encode("ascii")).digest() + hashlib.sha256(grant.encode("ascii")).digest()

    def derive(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=label + lid_raw).derive(shared)

    return derive(b"anima/v1 proof key "), derive(b"anima/v1 renewal key ")


def proof_tag(key: bytes, seq: int, method: str) -> bytes:
    """§4: first 16 bytes of HMAC-SHA256(key, "anima/v1 call" || 0x00 || seq (8 bytes BE) || method)."""
    message = b"anima/v1 call\x00" + seq.to_bytes(8, "big") + method.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).digest()[:16]


def proof_seq(values: list, key: bytes, method: str) -> int | None:
    """§4: the `seq` of a genuine proof, from all of a call's `anima-proof` values; None
    if it is malformed, repeated or does not verify (BAD_PROOF)."""
    match = PROOF_RE.fullmatch(values[0]) if len(values) == 1 and isinstance(values[0], str) else None
    if not match or int(match.group(1)) >= 1 << 64:
        return None
    seq, tag = int(match.group(1)), b64url_decode_or_none(match.group(2))
    if tag is None or not hmac.compare_digest(tag, proof_tag(key, seq, method)):
        return None
    return seq


def probe_reading(touches: int, executions: int, committed: int) -> bytes:
    """anima.v1.ProbeReading{touches=1, executions=2, committed=3}."""
    return enc_uint(1, touches) + enc_uint(2, executions) + enc_uint(3, committed)


# ---------------------------------------------------------------------------
# Calling other modules through the Core (§10)
# ---------------------------------------------------------------------------

DISCOVER_METHOD = "/anima.v1.Registry/Discover"
KV_PUT_METHOD = "/anima.sample.v1.KvStore/Put"
KV_GET_METHOD = "/anima.sample.v1.KvStore/Get"
CORE_CALL_TIMEOUT_S = 5.0  # every call through the Core, and the TLS check before the first
MAX_CORE_MESSAGE_BYTES = 4 * 1024 * 1024  # §10.2: the Core forwards at most 4 MiB per message

Route = collections.namedtuple("Route", ("core", "methods", "pin_header", "pin_value"))
Provider = collections.namedtuple("Provider", ("module", "interface", "version", "state", "route"))


def read_path(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class CoreCallError(Exception):
    """A call through the Core did not succeed: the gRPC code, the `anima` reason of
    its ErrorInfo (§5) if any, and the Core's message."""

    def __init__(self, method: str, code: str, reason: str | None, message: str):
        super().__init__(f"{method}: {reason or code}: {message}")
        self.method, self.code, self.reason, self.message = method, code, reason, message


def error_reason(error: grpc.RpcError) -> str | None:
    """The reason of a refused call (§5): `google.rpc.Status.details` (field 3) holds
    an Any (type_url 1, value 2) of `google.rpc.ErrorInfo{reason=1, domain=2}`."""
    try:
        raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
        if not isinstance(raw, bytes):
            return None
        for wire, any_ in dec_fields(raw).get(3, []):
            if wire != 2:
                continue
            fields = dec_fields(any_)
            if dec_string(fields, 1, MAX_TEXT) != "type.googleapis.com/google.rpc.ErrorInfo":
                continue
            info = dec_fields(last(fields, 2, 2) or b"")
            if dec_string(info, 2, MAX_TEXT) == "anima":
                return dec_string(info, 1, MAX_TEXT)
    except (WireError, AttributeError, TypeError, ValueError):
        pass
    return None


def decode_provider(data: bytes) -> Provider:
    """anima.v1.Provider{module=1, interface=2, version=3, state=4, route=5:
    Route{core=1, methods=2 (repeated), pin_header=3, pin_value=4}}."""
    fields = dec_fields(data)
    route = dec_fields(last(fields, 5, 2) or b"")
    methods = []
    for wire, value in route.get(2, []):
        if wire != 2 or len(value) > MAX_TEXT:
            raise WireError("a route method is not a string")
        methods.append(bytes(value).decode("utf-8", "replace"))
    return Provider(
        dec_string(fields, 1, MAX_TEXT),
        dec_string(fields, 2, MAX_TEXT),
        dec_string(fields, 3, MAX_TEXT),
        dec_string(fields, 4, MAX_TEXT),
        Route(dec_string(route, 1, MAX_TEXT), tuple(methods), dec_string(route, 3, MAX_TEXT), dec_string(route, 4, MAX_TEXT)),
    )


class CoreClient:
    """The module's client of its Core's endpoint (§10): the registry, and the
    interfaces the module requires, called through the Core with the module's own
    certificate. A module never dials another module (§10)."""

    def __init__(self, endpoint: str, core_urn: str, cert_path: str, key_path: str, ca_path: str):
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"ANIMA_CORE_ENDPOINT must be ip:port, not {shown(endpoint)}")
        if not (URN_RE.fullmatch(core_urn) and core_urn.startswith("urn:anima:core:")):
            raise ValueError(f"the Core to call is not a Core URN: {shown(core_urn)}")
        self.endpoint, self.host, self.port = endpoint, host.strip("[]"), int(port)
        self.core_urn = core_urn
        self.cert_path, self.key_path, self.ca_path = cert_path, key_path, ca_path
        self.lock = threading.Lock()
        self._channel = None

    @classmethod
    def from_env(cls, env, leased_by: str | None = None) -> "CoreClient":
        """§6.1: `ANIMA_CORE_ENDPOINT` (ip:port) and `ANIMA_CORE_URN` (else the Core
        whose lease this module holds, `leased_by`), with `ANIMA_CERT`, `ANIMA_KEY`
        and `ANIMA_CA`."""
        endpoint = env.get("ANIMA_CORE_ENDPOINT", "").strip()
        if not endpoint:
            raise ValueError("ANIMA_CORE_ENDPOINT is not set: a launching Core sets it; set it by hand to ip:port")
        core_urn = env.get("ANIMA_CORE_URN", "").strip() or leased_by or ""
        if not core_urn:
            raise ValueError("ANIMA_CORE_URN is not set and no Core leases this module: set it to the Core's URN")
        paths = [env.get(name, "") for name in ("ANIMA_CERT", "ANIMA_KEY", "ANIMA_CA")]
        if not all(paths):
            raise ValueError("ANIMA_CERT, ANIMA_KEY and ANIMA_CA must all be set")
        return cls(endpoint, core_urn, *paths)

    def check_core(self) -> None:
        """§1: the server must be the Core, by the URN in its certificate. A grpcio
        channel checks the chain (and the host name, which dev certificates satisfy
        for 127.0.0.1 and localhost) but neither exposes nor lets us check the
        server's certificate, so one TLS 1.3 connection of Python's own `ssl`, as
        this module and to the same endpoint, reads it first. (The Core may present
        another certificate of the same URN to grpcio: its P-256 endpoint one.)"""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # peers are identified by URN, not host name (§1)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=self.ca_path)
        context.load_cert_chain(self.cert_path, self.key_path)
        context.set_alpn_protocols(["h2"])
        with socket.create_connection((self.host, self.port), timeout=CORE_CALL_TIMEOUT_S) as raw:
            with context.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
        core = Identity(x509.load_der_x509_certificate(der))
        if core.urn != self.core_urn:
            raise ValueError(f"{self.endpoint} is {core.urn}, not {self.core_urn}")

    def channel(self):
        """The channel to the Core, checked and opened on first use; grpcio dials it
        again by itself after the connection is lost."""
        with self.lock:
            if self._channel is None:
                self.check_core()
                creds = grpc.ssl_channel_credentials(
                    root_certificates=read_path(self.ca_path),
                    private_key=read_path(self.key_path),
                    certificate_chain=read_path(self.cert_path),
                )
                options = [
                    # §1 keepalive, as on the module's own listener.
                    ("grpc.keepalive_time_ms", 5000),
                    ("grpc.keepalive_timeout_ms", 5000),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.max_pings_without_data", 0),
                    ("grpc.max_receive_message_length", MAX_CORE_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_CORE_MESSAGE_BYTES),
                ]
                self._channel = grpc.secure_channel(self.endpoint, creds, options=options)
            return self._channel

    def close(self) -> None:
        with self.lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def call(self, method: str, request: bytes, metadata=None) -> bytes:
        """One unary call on the Core's endpoint; a refusal raises CoreCallError."""
        stub = self.channel().unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return stub(request, timeout=CORE_CALL_TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as e:
            code = e.code().name if callable(getattr(e, "code", None)) else "UNKNOWN"
            details = e.details() if callable(getattr(e, "details", None)) else ""
            raise CoreCallError(method, code, error_reason(e), shown(details or "", 300)) from None

    def discover(self, interface: str, version_range: str = "") -> list[Provider]:
        """§10.1 `Registry/Discover`: DiscoverRequest{interface=1, range=2} ->
        DiscoverReply{providers=1 (repeated), revision=2, epoch=3}: the providers
        this module may call, whatever their state (only "leased" takes calls)."""
        reply = dec_fields(self.call(DISCOVER_METHOD, enc_str(1, interface) + enc_str(2, version_range)))
        return [decode_provider(value) for wire, value in reply.get(1, []) if wire == 2]

    @staticmethod
    def pin(provider: Provider | None):
        """The metadata that pins a call to `provider` (its route's), or none."""
        if provider is None or not provider.route.pin_header:
            return None
        return ((provider.route.pin_header, provider.route.pin_value),)

    def kv_put(self, key: str, value: str, delay_ms: int = 0, provider: Provider | None = None) -> int:
        """anima.sample/kv Put through the Core: PutRequest{entries=1: map<string,
        string> (each entry a message {key=1, value=2}), delay_ms=2} ->
        PutReply{version=1}. Returns the store's version after the write."""
        request = enc_len(1, enc_str(1, key) + enc_str(2, value)) + enc_uint(2, delay_ms)
        reply = dec_fields(self.call(KV_PUT_METHOD, request, self.pin(provider)))
        return last(reply, 1, 0) or 0

    def kv_get(self, key: str, provider: Provider | None = None) -> tuple[bool, str, int]:
        """anima.sample/kv Get through the Core: GetRequest{key=1} ->
        GetReply{found=1, value=2, version=3}. Returns (found, value, version)."""
        reply = dec_fields(self.call(KV_GET_METHOD, enc_str(1, key), self.pin(provider)))
        return bool(last(reply, 1, 0)), dec_string(reply, 2, MAX_MESSAGE_BYTES + 1024), last(reply, 3, 0) or 0


KV_INTERFACE, KV_RANGE = "anima.sample/kv", ">=1.0"
SELFTEST_KEY, SELFTEST_VALUE = "py", "from python"
NO_LEASE_PATIENCE_S = 10.0  # how long the selftest waits for the Core to take our grant


def kv_selftest(module: "Module", leased_by: str) -> None:
    """PYMODULE_KV_SELFTEST=1: once, after the first lease, discovers kv and calls it
    through the Core (§10); writes one line to stderr, ok or failed. Never raises."""
    try:
        outcome = "ok " + run_kv_selftest(module.env, leased_by)
    except (CoreCallError, ValueError, OSError) as e:  # ssl.SSLError is an OSError
        outcome = f"failed: {shown(str(e), 400)}"
    except Exception as e:  # noqa: BLE001 - a selftest failure must never crash the module
        outcome = f"failed: {shown(repr(e), 400)}"
    log(f"PYMODULE KV SELFTEST {outcome}")


def run_kv_selftest(env, leased_by: str) -> str:
    """The selftest's steps; returns what the ok line says, raises what went wrong."""
    client = CoreClient.from_env(env, leased_by)
    try:
        # The Core takes our grant after we sent it: until then it answers NO_LEASE.
        deadline = time.monotonic() + NO_LEASE_PATIENCE_S
        while True:
            try:
                providers = client.discover(KV_INTERFACE, KV_RANGE)
                break
            except CoreCallError as e:
                if e.reason != "NO_LEASE" or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        if not providers:
            # The registry lists only what a permission lets us call (§10.1); the call says why.
            try:
                client.kv_put(SELFTEST_KEY, SELFTEST_VALUE)
                why = "yet a call went through"
            except CoreCallError as e:
                why = f"a call anyway: {e.reason or e.code}: {e.message}"
            raise ValueError(f"discover listed no provider of {KV_INTERFACE} {KV_RANGE}; {why}")
        leased = [p for p in providers if p.state == "leased"]
        if not leased:
            states = ", ".join(f"{p.module} {p.state}" for p in providers)
            raise ValueError(f"no provider of {KV_INTERFACE} is leased: {shown(states, 300)}")
        provider = leased[0]
        version = client.kv_put(SELFTEST_KEY, SELFTEST_VALUE, provider=provider)
        found, value, read_version = client.kv_get(SELFTEST_KEY, provider=provider)
        if not found or read_version != version:
            raise ValueError(f"Put wrote version {version} but Get read found={found} version={read_version}")
        return f"providers={len(providers)} provider={provider.module} version={version} value={shown(value, 200)}"
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Self-test: the token, key and proof code against known vectors
# ---------------------------------------------------------------------------


def refused(fn, reason: str) -> bool:
    """Whether `fn()` raises Refused with `reason` (the self-test's checks)."""
    try:
        fn()
    except Refused as r:
        return r.reason == reason
    return False


def self_test(protocol_md: str) -> int:
    failures = []

    def check(name: str, ok: bool) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failures.append(name)

    # base64url (§3): unpadded, canonical.
    check("base64url round trip", b64url_decode(b64url(b"\xfb\xff")) == b"\xfb\xff")
    check("base64url rejects padding", b64url_decode_or_none("-_8=") is None)
    check("base64url rejects non-canonical bits", b64url_decode_or_none("-_9") is None)

    # RFC 8032 §7.1 test 1 through the strict verifier.
    pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    key = VerifyKey(ed25519.Ed25519PublicKey.from_public_bytes(pub))
    check("EdDSA: RFC 8032 test 1 verifies", key.verify(b"", sig))
    s_plus_l = (int.from_bytes(sig[32:], "little") + _L).to_bytes(32, "little")
    check("EdDSA: non-canonical S refused", not key.verify(b"", sig[:32] + s_plus_l))
    identity_point = (1).to_bytes(32, "little")
    check("EdDSA: small-order key refused", ed25519_weak_point(identity_point) and not ed25519_weak_point(pub))
    check("EdDSA: small-order R refused", not key.verify(b"", identity_point + sig[32:]))

    # ES256 (§3): R || S, not DER; our signer and verifier agree.
    p256 = ec.generate_private_key(ec.SECP256R1())
    signer, verifier = SigningKey(p256), VerifyKey(p256.public_key())
    token = jws_sign(signer, {"typ": "x"})
    check("ES256: header bytes", b64url_decode(token.split(".")[0]) == HEADERS["ES256"])
    check("ES256: R||S signature of 64 bytes verifies", jws_verify(verifier, token) == b'{"typ":"x"}')
    der = p256.sign(b"m", ec.ECDSA(hashes.SHA256()))
    check("ES256: DER signature refused", not verifier.verify(b"m", der))
    ed_signer = SigningKey(ed25519.Ed25519PrivateKey.generate())
    check("JWS: alg not matching the key is BAD_TOKEN", refused(lambda: jws_verify(verifier, jws_sign(ed_signer, {})), "BAD_TOKEN"))
    check("JWS: oversized token is BAD_TOKEN", refused(lambda: jws_verify(verifier, "a" * 8193), "BAD_TOKEN"))
    check("claims: unknown claim is BAD_TOKEN", refused(lambda: parse_claims(b'{"typ":"t","x":1}', "t", {"typ"}), "BAD_TOKEN"))
    check("claims: duplicate claim is BAD_TOKEN", refused(lambda: parse_claims(b'{"typ":"t","typ":"t"}', "t", {"typ"}), "BAD_TOKEN"))
    check("claims: float is BAD_TOKEN", refused(lambda: claim_int(parse_claims(b'{"typ":"t","n":1.0}', "t", {"typ", "n"}), "n"), "BAD_TOKEN"))

    # RFC 7748 §6.1 X25519 and RFC 5869 A.1 HKDF-SHA256: the primitives of §3.3.
    alice = x25519.X25519PrivateKey.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    check(
        "X25519: RFC 7748 shared secret",
        alice.exchange(x25519.X25519PublicKey.from_public_bytes(bob)).hex()
        == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
    )
    okm = HKDF(
        algorithm=hashes.SHA256(), length=42, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA))
    ).derive(b"\x0b" * 22)
    check(
        "HKDF-SHA256: RFC 5869 A.1",
        okm.hex() == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    )

    # §4 replay window.
    lease = Lease("l", "c", None, [], (b"", b""), 0.0, None)
    results = [lease.accept_proof_seq(s) for s in (1, 3, 2, 3, 2000, 977, 976, 1500, 1500)]
    check("replay window: once each, 1024 below the highest", results == [True, True, True, False, True, True, False, True, False])

    # §9 versions and ranges, as Cargo's `semver` reads, writes and matches them.
    def rejects(parse, text) -> bool:
        try:
            parse(text)
        except ValueError:
            return True
        return False

    check("§9 version: 1.0 is 1.0.0", format_version(parse_version("1.0")) == "1.0.0")
    check("§9 version: pre-release kept", format_version(parse_version("1.2-beta.1")) == "1.2.0-beta.1")
    check("§9 version: build metadata, leading zeros refused", rejects(parse_version, "1.0.0+b") and rejects(parse_version, "01.0"))
    normal = {"1.2": "^1.2", ">= 1.0,<2": ">=1.0, <2", "1.x": "1.*", "1.2.*": "1.2.*", "*": "*", "~1.2.3": "~1.2.3"}
    check("§9 range: normal form", all(format_range(parse_range(k)) == v for k, v in normal.items()))
    check("§9 range: malformed refused", all(rejects(parse_range, t) for t in ("", "1.*.3", "*, 1", ">=1.0,", "=>1", "1.0.0+b")))
    in_range = [
        (">=1.0", "1.0.0", True),
        (">=1.0", "2.5.1", True),
        ("^2", "1.2.0", False),
        ("^1.2", "1.9.0", True),
        ("^1.2", "2.0.0", False),
        ("^0.2", "0.3.0", False),
        ("^0.0.3", "0.0.4", False),
        ("~1.2.3", "1.2.9", True),
        ("~1.2.3", "1.3.0", False),
        (">1.2", "1.2.5", False),
        ("<=1.2", "1.2.5", True),
        (">=1.2, <2", "2.0.0", False),
        ("1.2.*", "1.2.7", True),
        (">=1.0", "1.1.0-beta", False),
        (">=1.1.0-alpha", "1.1.0-beta", True),
        (">=1.1.0-alpha.10", "1.1.0-alpha.9", False),
    ]
    wrong = [(r, v) for r, v, want in in_range if range_matches(parse_range(r), parse_version(v)) != want]
    check(f"§9 range matching{': wrong for ' + repr(wrong) if wrong else ''}", not wrong)

    # §2 one lease per connection, on the module's own bookkeeping.
    try:
        check_one_lease_per_connection(check)
    except Exception as e:  # noqa: BLE001 - a failure, not a crash
        check(f"§2 one lease per connection: {e!r}", False)

    # PROTOCOL.md Appendix A, read from the document itself.
    try:
        with open(protocol_md, encoding="utf-8") as f:
            vectors = appendix_vectors(f.read())
    except OSError as e:
        vectors = {}
        check(f"read {protocol_md}: {e.strerror}", False)
    if vectors:
        try:
            check_appendix_a(vectors, check)
        except Exception as e:  # noqa: BLE001 - a missing or garbled vector is a failure, not a crash
            check(f"Appendix A: {e!r}", False)
    elif not failures:
        check("PROTOCOL.md has Appendix A vectors", False)
    print(f"{'FAILED' if failures else 'passed'}: {len(failures)} failure(s)")
    return 1 if failures else 0


def check_one_lease_per_connection(check) -> None:
    """§2 *One lease per connection*, through Module.on_offer and Module.admit with no
    network: an offer on a connection whose lease is live is refused LEASE_EXISTS; once
    that lease ended, calls under it are refused with the reason it ended, and an offer on
    a new control stream of the connection is granted like a first one, its lease
    replacing the ended one. `context.peer()` (ip:port) is all grpcio tells of a
    connection, and a new connection may reuse an ended one's: so its offer is granted
    too, and its calls without the ended lease's proof are answered as on a connection
    without a lease (STANDBY here), not with the ended lease's reason."""

    def issue(urn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, urn)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(urn)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return pem, key_pem, key

    module_pem, module_key_pem, _ = issue("urn:anima:module:selftest")
    core_pem, _, core_key = issue("urn:anima:core:selftest")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "module.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                'urn = "urn:anima:module:selftest"\nversion = "0.1.0"\ntype = "resident-shared"\n'
                f'methods = ["{TOUCH_METHOD}", "{READ_METHOD}"]\nmax_lease = "30s"\n'
            )
        module = Module(Contract(path), module_pem, module_key_pem, module_pem, {})
    core = Identity(x509.load_pem_x509_certificate(core_pem))
    core_signer = SigningKey(core_key)
    conn = "ipv4:127.0.0.1:40000"

    def offer():
        """One offer on a new control stream of `conn`: the stream and the frames sent."""
        now = int(time.time())
        claims = {
            "typ": "anima-offer+v1",
            "lid": b64url(os.urandom(16)),
            "con": core.urn,
            "pro": module.identity.urn,
            "scope": sorted(module.contract.methods),
            "ttl_ms": 30_000,
            "iat": now,
            "exp": now + 30,
            "cnf": {"iss_x5t#S256": core.fingerprint, "aud_x5t#S256": module.identity.fingerprint},
            "kx": b64url(x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()),
            "rev": REVOCATION_CONDITIONS,
        }
        session = Session(module, None, conn, core)
        session.state = "verifying"  # as on_frame leaves it on a first frame that is an offer
        module.on_offer(session, jws_sign(core_signer, claims), time.monotonic())
        frames = []
        while not session.out.empty():
            item = session.out.get_nowait()
            if item is not _CLOSE:
                frames.append(decode_frame(item))
        return session, [kind if kind != "refuse" else value[0] for kind, value in frames]

    first, sent = offer()
    check("§2 a first offer on a connection is granted", sent == ["grant"] and first.lease is not None)
    second, sent = offer()
    check(
        "§2 an offer on a connection whose lease is live: LEASE_EXISTS, the lease lives on",
        sent == ["LEASE_EXISTS"] and second.lease is None and first.lease.state == "active",
    )

    class Call:  # what Module.admit reads of a call's grpc.ServicerContext
        def __init__(self, proof: str | None):
            self.proof = proof

        def peer(self):
            return conn

        def auth_context(self):
            return {"x509_pem_cert": [core_pem]}

        def invocation_metadata(self):
            return [("anima-proof", self.proof)] if self.proof else []

    def answer(proof: str | None) -> str:
        try:
            module.admit(READ_METHOD, Call(proof))
        except Refused as r:
            return r.reason
        return "admitted"

    def proof(lease: Lease, seq: int) -> str:
        return f"v1.{seq}.{b64url(proof_tag(lease.key, seq, READ_METHOD))}"

    check("§4 a call under the live lease is admitted", answer(proof(first.lease, 1)) == "admitted")
    with module.lock:
        module._end(first.lease, "revoked by the Core (LEASE_REVOKED)")
    check(
        "§2 a call under a lease that ended, on its connection: the reason it ended",
        answer(proof(first.lease, 2)) == "LEASE_REVOKED",
    )
    check(
        "§2 a call without that lease's proof (a new connection reusing the ip:port): STANDBY",
        answer(None) == "STANDBY" and answer("v1.3." + "A" * 22) == "STANDBY",
    )
    third, sent = offer()
    with module.lock:
        attached = module._lease_on(conn)
    check(
        "§2 an offer on a connection whose lease ended is granted and replaces it",
        sent == ["grant"] and third.lease is not None and attached is third.lease,
    )
    check(
        "§4 a call under the lease that replaced it is admitted",
        third.lease is not None and answer(proof(third.lease, 1)) == "admitted",
    )


def appendix_vectors(markdown: str) -> dict[str, str]:
    """PROTOCOL.md Appendix A's fenced blocks: `vectors` blocks of `name = value` lines
    (`#` lines explain), and `jws NAME` / `json NAME` blocks of one value each."""
    values = {}
    for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", markdown, re.M | re.S):
        info, body = m.group(1).split(), m.group(2)
        if info == ["vectors"]:
            for line in body.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    name, _, value = line.partition(" = ")
                    values[name] = value
        elif len(info) == 2 and info[0] in ("jws", "json"):
            values[info[1]] = body.strip()
    return values


def check_appendix_a(v: dict[str, str], check) -> None:
    """Runs this module's own token code on Appendix A's inputs and compares every output."""

    class Party:  # what check_offer_token / grant_token need of an identity
        def __init__(self, urn, fingerprint, public):
            self.urn, self.fingerprint, self.key = urn, fingerprint, VerifyKey(public)

    h = bytes.fromhex
    core_sk = ed25519.Ed25519PrivateKey.from_private_bytes(h(v["core_ed25519_seed"]))
    module_sk = ed25519.Ed25519PrivateKey.from_private_bytes(h(v["module_ed25519_seed"]))
    core_pk, module_pk = core_sk.public_key(), module_sk.public_key()
    check("A.2 core_ed25519_public", core_pk.public_bytes_raw().hex() == v["core_ed25519_public"])
    check("A.2 module_ed25519_public", module_pk.public_bytes_raw().hex() == v["module_ed25519_public"])
    core_fp, module_fp = b64url(h(v["core_fingerprint"])), b64url(h(v["module_fingerprint"]))
    check("A.2 fingerprints base64url", (core_fp, module_fp) == (v["core_fingerprint_b64"], v["module_fingerprint_b64"]))
    check("A.2 lease_id_b64", b64url(h(v["lease_id"])) == v["lease_id_b64"])
    core_kx = x25519.X25519PrivateKey.from_private_bytes(h(v["core_kx_secret"]))
    module_kx = x25519.X25519PrivateKey.from_private_bytes(h(v["module_kx_secret"]))
    check("A.2 core_kx_public", b64url(core_kx.public_key().public_bytes_raw()) == v["core_kx_public_b64"])
    check("A.2 module_kx_public", b64url(module_kx.public_key().public_bytes_raw()) == v["module_kx_public_b64"])
    core = Party(v["core_urn"], core_fp, core_pk)
    module = Party(v["module_urn"], module_fp, module_pk)
    methods = v["scope"].split(",")
    iat = int(v["iat"])

    # A.3: the module accepts the offer (steps 1-7) at wall-clock `iat`.
    offer = v["offer_jws"]
    claims = check_offer_token(offer, core, module, methods, float(iat))
    check("A.3 offer_jws verifies and passes steps 1-7", True)
    check("A.3 offer_claims are the signed bytes", b64url_decode(offer.split(".")[1]) == v["offer_claims"].encode())
    check("A.3 our signer reproduces offer_jws", jws_sign(SigningKey(core_sk), json.loads(v["offer_claims"])) == offer)
    check("A.4 offer_sha256", hashlib.sha256(offer.encode()).hexdigest() == v["offer_sha256"])
    tampered = offer[:-2] + ("AA" if offer[-2:] != "AA" else "BA")
    try:
        check_offer_token(tampered, core, module, methods, float(iat))
        check("A.3 a tampered offer signature: BAD_SIGNATURE", False)
    except Refused as r:
        check("A.3 a tampered offer signature: BAD_SIGNATURE", r.reason == "BAD_SIGNATURE")
    for name, args, reason in (
        ("another module", (core, Party("urn:anima:module:other", module_fp, module_pk), methods, iat), "IDENTITY_MISMATCH"),
        ("other certificates", (core, Party(module.urn, core_fp, module_pk), methods, iat), "BINDING_MISMATCH"),
        ("a clock 301 s ahead", (core, module, methods, iat + 301), "BAD_TOKEN"),
        ("an undeclared method", (core, module, [], iat), "SCOPE_DENIED"),
    ):
        try:
            check_offer_token(offer, *args)
            check(f"A.3 offer against {name}: {reason}", False)
        except Refused as r:
            check(f"A.3 offer against {name}: {reason}", r.reason == reason)

    # A.4: the grant, byte for byte.
    ttl = min(claims["ttl_ms"], int(v["max_lease_ms"]))
    check("A.4 granted_ttl_ms", ttl == int(v["granted_ttl_ms"]))
    grant, (key, renewal_key) = grant_token(SigningKey(module_sk), offer, claims, core, module, ttl, module_kx, iat * 1000)
    check("A.4 grant_claims", b64url_decode(grant.split(".")[1]) == v["grant_claims"].encode())
    check("A.4 grant_jws", grant == v["grant_jws"])
    check("A.4 grant_sha256", hashlib.sha256(grant.encode()).hexdigest() == v["grant_sha256"])
    check("A.4 the Core verifies the grant", jws_verify(VerifyKey(module_pk), grant) == v["grant_claims"].encode())

    # A.5: the per-call key.
    shared = module_kx.exchange(core_kx.public_key())
    check("A.5 shared_secret", shared.hex() == v["shared_secret"])
    salt = hashlib.sha256(offer.encode()).digest() + hashlib.sha256(grant.encode()).digest()
    check("A.5 hkdf_salt", salt.hex() == v["hkdf_salt"])
    check("A.5 hkdf_info", (b"anima/v1 proof key " + h(v["lease_id"])).hex() == v["hkdf_info"])
    check("A.5 proof_key", key.hex() == v["proof_key"])
    check("A.5 hkdf_renewal_info", (b"anima/v1 renewal key " + h(v["lease_id"])).hex() == v["hkdf_renewal_info"])
    check("A.5 renewal_key", renewal_key.hex() == v["renewal_key"])

    # A.6: call proofs; the module admits each once.
    method = v["proof_method"]
    for seq in (1, 2):
        check(f"A.6 proof_seq{seq}", f"v1.{seq}.{b64url(proof_tag(key, seq, method))}" == v[f"proof_seq{seq}"])
        check(f"A.6 proof_seq{seq} verifies", proof_seq([v[f"proof_seq{seq}"]], key, method) == seq)
    check("A.6 a proof for another method is BAD_PROOF", proof_seq([v["proof_seq1"]], key, method + "x") is None)
    window = Lease(claims["lid"], "conn", core, methods, (key, renewal_key), 0.0, None)
    check("A.6 admitted once each", [window.accept_proof_seq(s) for s in (1, 2, 1)] == [True, True, False])

    # A.7: the renewal and its answer.
    renew_iat = int(v["renew_iat"])
    renew = check_step_token(v["renew_jws"], core.key, renewal_key, "anima-renew+v1", claims["lid"], {"ttl_ms"}, ())
    check("A.7 renew_claims", b64url_decode(v["renew_jws"].split(".")[1]) == v["renew_claims"].encode())
    granted = min(renew["ttl_ms"], int(v["max_lease_ms"]))
    renewed = renewed_token(renewal_key, claims["lid"], 1, renew["seq"], granted, renew_iat * 1000)
    check("A.7 renewed_claims", b64url_decode(renewed.split(".")[1]) == v["renewed_claims"].encode())
    check("A.7 renewed_jws", renewed == v["renewed_jws"])
    check("A.7 the renewal under the proof key is BAD_SIGNATURE", refused(lambda: mac_verify(key, v["renew_jws"]), "BAD_SIGNATURE"))
    signed_renew = jws_sign(SigningKey(core_sk), json.loads(v["renew_claims"]))
    check(
        "A.7 a signed renewal is BAD_TOKEN",
        refused(lambda: check_step_token(signed_renew, core.key, renewal_key, "anima-renew+v1", claims["lid"], {"ttl_ms"}, ()), "BAD_TOKEN"),
    )


# ---------------------------------------------------------------------------
# Launch (§6.1)
# ---------------------------------------------------------------------------


def read_file(variable: str) -> bytes:
    path = os.environ.get(variable)
    if not path:
        raise StartupError(f"{variable} is not set")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise StartupError(f"{variable}: cannot read {path}: {e.strerror}") from None


def die_with_parent(env) -> bool:
    """§6.1: with ANIMA_PARENT_PID set (a Core launched us), asks the kernel for
    SIGTERM when that parent dies, so a killed Core leaves no orphan. False when
    the parent is already gone."""
    text = env.get("ANIMA_PARENT_PID", "").strip()
    if not text:
        return True
    if not text.isdigit():
        raise StartupError(f"ANIMA_PARENT_PID is not a process id: {shown(text)}")
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            log(f"cannot ask for the parent-death signal: errno {ctypes.get_errno()}")
        # The parent may have died before the request took effect.
        if os.getppid() != int(text):
            log("the launching Core is already gone; exiting")
            return False
    return True


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--self-test"]:
        here = os.path.dirname(os.path.abspath(__file__))
        return self_test(argv[2] if len(argv) > 2 else os.path.join(here, "..", "..", "..", "PROTOCOL.md"))
    path = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "module.toml")
    try:
        if not die_with_parent(os.environ):
            return 0
        contract = Contract(path)
        module = Module(contract, read_file("ANIMA_CERT"), read_file("ANIMA_KEY"), read_file("ANIMA_CA"), os.environ)
        address = module.listen(os.environ.get("ANIMA_LISTEN") or "127.0.0.1:0")
    except StartupError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 1

    def on_signal(number, _frame):
        # Runs in the main thread, maybe while it holds the lock: hand over to a thread.
        name = signal.Signals(number).name
        threading.Thread(target=module.request_shutdown, args=(name,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"{contract.urn} ({contract.type}) listening on {address}, bound core {module.bound_core or '-'}")
    with module.lock:
        module.started = time.monotonic()  # the startup grace runs from the ready line
    print(f"ANIMA/1 READY {contract.urn} {address}", flush=True)
    sys.stdout = sys.stderr  # nothing else ever goes to stdout (§6.1)
    module.run()  # exits the process
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
