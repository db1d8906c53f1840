"""A gateway client written with Python's grpcio, not with our Rust code.

It calls the sample modules through the Core's gateway using hand-encoded
protobuf (the Python module's encoder in module/anima_pymodule.py, no generated
code), so it depends on nothing of our Rust code but the wire.

usage: gateway_client.py MODE ADDR CA [CERT KEY]
  MODE ok      call each sample module and check the answers
  MODE denied  expect PERMISSION_DENIED with reason POLICY_DENIED
  MODE nocert  connect without a client certificate; expect the handshake to fail
  MODE deadline  a slow call under a 50 ms deadline; expect DEADLINE_EXCEEDED
Prints one line per check and exits 0 when every check holds.
"""

import hashlib
import os
import sys

# The protobuf wire format by hand: the Python module's encoder and its strict
# decoder. Importing it sets GRPC_SSL_CIPHER_SUITES before grpc loads, so this
# client too can complete only TLS 1.3 handshakes (PROTOCOL.md §1).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "module"))
from anima_pymodule import dec_fields, enc_len, enc_varint  # noqa: E402

import grpc  # noqa: E402


def field_str(number, text):
    return enc_len(number, text.encode())


def field_int(number, value):
    return enc_varint(number << 3) + enc_varint(value)


def decode(data):
    """field number -> list of values (int or bytes)."""
    return {number: [value for _, value in values] for number, values in dec_fields(data).items()}


def call(channel, method, request, timeout=10, metadata=None):
    stub = channel.unary_unary(method, request_serializer=lambda x: x, response_deserializer=lambda x: x)
    return stub(request, timeout=timeout, metadata=metadata)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    mode, addr, ca = sys.argv[1], sys.argv[2], read(sys.argv[3])
    if mode == "nocert":
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=read(sys.argv[5]), certificate_chain=read(sys.argv[4])
        )
    channel = grpc.secure_channel(addr, creds)

    if mode == "ok":
        reply = decode(call(channel, "/anima.sample.v1.Hasher/Digest", field_str(1, "abc")))
        assert reply[1][0].decode() == hashlib.sha256(b"abc").hexdigest(), reply
        print("hasher ok", reply[1][0].decode())

        # PutRequest.entries (field 1, a map): one entry, key (1) and value (2).
        put = enc_len(1, field_str(1, "k") + field_str(2, "v"))
        call(channel, "/anima.sample.v1.KvStore/Put", put)
        got = decode(call(channel, "/anima.sample.v1.KvStore/Get", field_str(1, "k")))
        assert got.get(1, [0])[0] == 1 and got[2][0] == b"v", got
        print("kvstore ok")

        inc = field_str(1, "visits") + field_int(2, 2)
        call(channel, "/anima.sample.v1.Tally/Increment", inc)
        value = decode(call(channel, "/anima.sample.v1.Tally/Get", field_str(1, "visits")))
        assert value[2][0] == 2, value
        print("tally ok")
    elif mode == "deadline":
        # Put with a 1 s delay under a 50 ms deadline. Connect first, so the
        # 50 ms are the call's own and not spent on the TLS handshake (which
        # on a loaded machine could let the deadline pass before the call
        # reaches the Core at all).
        grpc.channel_ready_future(channel).result(timeout=10)
        put = enc_len(1, field_str(1, "late") + field_str(2, "write")) + field_int(2, 1000)
        try:
            call(channel, "/anima.sample.v1.KvStore/Put", put, timeout=0.05)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
            print("deadline ok", e.code())
        else:
            raise AssertionError("the call outlived its deadline")
    elif mode == "denied":
        try:
            call(channel, "/anima.sample.v1.Hasher/Digest", field_str(1, "abc"))
        except grpc.RpcError as e:
            details = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.code()
            assert b"POLICY_DENIED" in details, details
            print("denied ok", e.code())
        else:
            raise AssertionError("the call was allowed")
    elif mode in ("nocert", "unserved"):
        try:
            call(channel, "/anima.sample.v1.Hasher/Digest", field_str(1, "abc"), timeout=5)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e.code()
            print(mode, "ok", e.code())
        else:
            raise AssertionError(f"served ({mode})")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
