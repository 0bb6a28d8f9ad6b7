#!/usr/bin/env python3
"""Hostile and worst-case images sent to `exemplar serve`, each to a fresh server so that
the server's peak resident memory (VmHWM) belongs to that request alone.

    scripts/hostile-inputs.py --binary target/release/exemplar [--extra photo.jpg ...]

Cases (PNGs written with the standard library): needle shapes (1 x 200,000: 855 bytes;
4,000 x 1; 8,000 x 1), a one-row crop of a 7,000 x 7,000 photo, a 49 MP 16-bit RGBA photo
(the largest format under the 50 MP limit), 4 of those at once, and any --extra files.
Prints per case: status, kind, peak RSS before and after, growth. Last line: JSON.
"""
import argparse
import json
import os
import struct
import sys
import tempfile
import threading
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadlib import Client, rss_bytes, start_server  # noqa: E402


def png(width, height, bit_depth=8, colour_type=2, pixel=None):
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    pixel = pixel or bytes(channels * bit_depth // 8)
    row = b"\x00" + pixel * width
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/exemplar")
    ap.add_argument("--extra", nargs="*", default=[], help="more image files to send")
    args = ap.parse_args()
    rgba16 = png(7000, 7000, 16, 6, b"\x00\x10\x00\x20\x00\x30\xff\xff")
    cases = [
        ("1x200000 png", png(1, 200_000), None, 1),
        ("4000x1 png", png(4000, 1), None, 1),
        ("8000x1 png", png(8000, 1), None, 1),
        ("7000x7000 crop 0,0,7000,1", png(7000, 7000), "0,0,7000,1", 1),
        ("7000x7000 rgba16 (49 MP)", rgba16, None, 1),
        ("7000x7000 rgba16 x4 at once", rgba16, None, 4),
        ("7000x7000 rgb8 crop 0,0,7000,350", png(7000, 7000), "0,0,7000,350", 1),
    ] + [(os.path.basename(p), open(p, "rb").read(), None, 1) for p in args.extra]
    warm = png(640, 480, pixel=b"\x80\x40\x20")
    results = []
    for name, image, crop, copies in cases:
        with tempfile.TemporaryDirectory() as data_dir:
            server, url = start_server(args.binary, data_dir)
            client = Client(url, timeout=300)
            client.multipart("/search", [], [("image", "warm.png", warm)])
            before = rss_bytes(server.pid, "VmHWM")
            answers = [None] * copies

            def send(i):
                fields = [("crop", crop)] if crop else []
                answers[i] = client.multipart("/search", fields, [("image", "q.png", image)])

            threads = [threading.Thread(target=send, args=(i,)) for i in range(copies)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            after = rss_bytes(server.pid, "VmHWM")
            alive = client.request("GET", "/healthz")[0] == 200
            server.terminate()
            server.wait()
        status, body = answers[0]
        row = {
            "case": name,
            "bytes": len(image),
            "status": status,
            "kind": (body or {}).get("kind") or (body or {}).get("verdict", {}).get("status"),
            "peak_before_mib": round(before / 2**20),
            "peak_after_mib": round(after / 2**20),
            "growth_mib": round((after - before) / 2**20),
            "still_serving": alive,
        }
        print(json.dumps(row), file=sys.stderr)
        results.append(row)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
