"""Parser throughput: parse and serialise a typical INVITE (with SDP) and a 200 OK.

    python bench/sip_parse.py [--seconds S]

Prints messages per second and microseconds per message for each, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

from sipdialer.sip.message import parse_message

INVITE = (
    b"INVITE sip:0820001234@trunk.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK7f3a9c1d2e4b;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "0123456789" <sip:0123456789@trunk.test>;tag=a1b2c3d4\r\n'
    b"To: <sip:0820001234@trunk.test>\r\n"
    b"Call-ID: 4f1c2d3e4f5a6b7c8d9e@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:dialer@127.0.0.1:5070>\r\n"
    b'Proxy-Authorization: Digest username="dialer", realm="trunk.test", '
    b'nonce="Z2Fzd2Vhc2Rm", uri="sip:0820001234@trunk.test", '
    b'response="0123456789abcdef0123456789abcdef", qop=auth, nc=00000001, cnonce="abcd"\r\n'
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 141\r\n\r\n"
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK7f3a9c1d2e4b;rport=5070;received=127.0.0.1\r\n"
    b"Record-Route: <sip:127.0.0.1:5080;lr;ftag=a1b2c3d4>\r\n"
    b'From: "0123456789" <sip:0123456789@trunk.test>;tag=a1b2c3d4\r\n'
    b"To: <sip:0820001234@trunk.test>;tag=xyz987\r\n"
    b"Call-ID: 4f1c2d3e4f5a6b7c8d9e@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:0820001234@127.0.0.1:5103>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def measure(data: bytes, seconds: float) -> dict[str, float]:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            msg = parse_message(data)
            msg.top_via()
            msg.cseq()
            msg.to_bytes()
        n += 100
    elapsed = time.perf_counter() - start
    return {"per_second": round(n / elapsed), "us_per_message": round(elapsed / n * 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    result = {"invite": measure(INVITE, args.seconds), "ok_200": measure(OK, args.seconds)}
    for name, figures in result.items():
        print(f"{name:8s} {figures['per_second']:>8} msg/s  {figures['us_per_message']} µs/msg")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
