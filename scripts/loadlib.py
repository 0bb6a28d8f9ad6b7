"""Helpers shared by the crash-loop and soak scripts: a loopback-only HTTP client, distinct
generated photos (PNG written with the standard library), and starting `exemplar serve`."""
import http.client
import ipaddress
import json
import os
import random
import socket
import struct
import subprocess
import sys
import urllib.parse
import uuid
import zlib

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def images_under(folder):
    """Every image file under `folder`, sorted."""
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(out)


class Client:
    def __init__(self, url, timeout=60):
        parsed = urllib.parse.urlparse(url)
        address = ipaddress.ip_address(socket.gethostbyname(parsed.hostname))
        if not address.is_loopback:
            sys.exit(f"refusing {url}: only loopback servers are used")
        self.host, self.port, self.timeout = parsed.hostname, parsed.port or 80, timeout

    def request(self, method, path, body=b"", headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            try:
                parsed = json.loads(data) if data else None
            except ValueError:
                parsed = {"non_json_body": data[:200].decode("latin-1")}
            return response.status, parsed
        finally:
            conn.close()

    def multipart(self, path, fields, files):
        boundary = uuid.uuid4().hex
        body = b""
        for name, value in fields:
            body += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()
        for name, filename, data in files:
            body += (
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode() + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def distinct_photo(n, side=160, block=20):
    """A PNG of coloured blocks, different for every n."""
    rng = random.Random(n)
    cells = side // block
    colours = [bytes(rng.randrange(256) for _ in range(3)) for _ in range(cells * cells)]
    rows = []
    for y in range(side):
        row = b"".join(colours[(y // block) * cells + x // block] for x in range(side))
        rows.append(b"\x00" + row)
    raw = zlib.compress(b"".join(rows))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def start_server(binary, data_dir, extra=()):
    """Starts `exemplar serve` on a free loopback port; returns (process, url)."""
    process = subprocess.Popen(
        [binary, "serve", "--bind", "127.0.0.1:0", "--data-dir", data_dir, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("listening on "):
            return process, line.split()[-1]
    sys.exit("the server exited before listening")


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def rss_bytes(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None
