#!/usr/bin/env python3
"""Hand-made packets for the isolation tests (an attacker's tools, run inside a container's
namespace). Usage:

  forge.py vxlan DST_IP GBP_TAG INNER_DST_MAC INNER_SRC_IP INNER_DST_IP PROTO PORT
      one UDP datagram to DST_IP:4789 holding a VXLAN-GBP frame (VNI 1, group policy id
      GBP_TAG) that carries an IPv4 UDP datagram or TCP SYN (PROTO udp|tcp) to PORT
  forge.py spoof SRC_IP DST_IP PORT
      one raw IPv4 UDP datagram to DST_IP:PORT with a forged source address
"""
import socket
import struct
import sys


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def l4(proto: str, src: str, dst: str, port: int) -> tuple[int, bytes]:
    pseudo = lambda n, seg: socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, n, len(seg))
    if proto == "udp":
        body = b"forged"
        seg = struct.pack("!HHHH", 40000, port, 8 + len(body), 0) + body
        seg = seg[:6] + struct.pack("!H", checksum(pseudo(17, seg) + seg) or 0xFFFF) + seg[8:]
        return 17, seg
    seg = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    seg = seg[:16] + struct.pack("!H", checksum(pseudo(6, seg) + seg)) + seg[18:]
    return 6, seg


def main() -> None:
    mode = sys.argv[1]
    if mode == "vxlan":
        dst, tag, mac, isrc, idst, proto, port = sys.argv[2:9]
        number, seg = l4(proto, isrc, idst, int(port))
        inner = ipv4(isrc, idst, number, seg)
        eth = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("eeee0aff0000") + b"\x08\x00"
        # Flags: G (group policy) and I (VNI valid); then the group policy id and VNI 1.
        vxlan = struct.pack("!BBH", 0x88, 0, int(tag, 0)) + struct.pack("!I", 1 << 8)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(vxlan + eth + inner, (dst, 4789))
    elif mode == "spoof":
        src, dst, port = sys.argv[2:5]
        number, seg = l4("udp", src, dst, int(port))
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.sendto(ipv4(src, dst, number, seg), (dst, 0))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
