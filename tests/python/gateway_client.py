"""A gateway client written with Python's grpcio, not with our Rust code.

It calls the sample modules through the Core's gateway using hand-encoded
protobuf (no generated code), so it depends on nothing of ours but the wire.

usage: gateway_client.py MODE ADDR CA [CERT KEY]
  MODE ok      call each sample module and check the answers
  MODE denied  expect PERMISSION_DENIED with reason POLICY_DENIED
  MODE nocert  connect without a client certificate; expect the handshake to fail
  MODE deadline  a slow call under a 50 ms deadline; expect DEADLINE_EXCEEDED
Prints one line per check and exits 0 when every check holds.
"""

import hashlib
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_str(number, text):
    data = text.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_int(number, value):
    return varint(number << 3 | 0) + varint(value & 0xFFFFFFFFFFFFFFFF)


def decode(data):
    """field number -> list of values (int or bytes)."""
    fields, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 2:
            length, i = read_varint(data, i)
            value, i = data[i : i + length], i + length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def read_varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


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

        put = varint(1 << 3 | 2)  # entries: map<string,string> or repeated Entry -> field 1
        entry = field_str(1, "k") + field_str(2, "v")
        put += varint(len(entry)) + entry
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
        entry = field_str(1, "late") + field_str(2, "write")
        put = varint(1 << 3 | 2) + varint(len(entry)) + entry + field_int(2, 1000)
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
