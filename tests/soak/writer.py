#!/usr/bin/env python3
"""An acknowledged-write recorder for the kill-and-restart soak.

    writer.py write DEV LEDGER STOPFILE   write until STOPFILE exists
    writer.py verify DEV LEDGER           check every acknowledged block

`write` picks random 4 KiB blocks of DEV (O_DIRECT), writes a block that names
its generation, fsyncs, and only then records the block and the hash of its
content in LEDGER (one line, flushed). A write or fsync that fails is not
acknowledged; it is recorded as "maybe" (the daemon may have stored it before
it died), and the writer waits and goes on. It prints the longest time one
write+fsync took (the stall a daemon restart causes).

`verify` reads each block back: it must hold its last acknowledged version,
or one of the unacknowledged ones written after it. Blocks that hold neither
are acknowledged writes lost. Exit status 1 when any is.
"""
import hashlib
import mmap
import os
import random
import sys
import time

BLOCK = 4096


def block_count(fd):
    return os.lseek(fd, 0, os.SEEK_END) // BLOCK


def write(dev, ledger_path, stop):
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    blocks = block_count(fd)
    buf = mmap.mmap(-1, BLOCK)  # page aligned, as O_DIRECT wants
    rng = random.Random(1)
    acked = failed = 0
    worst = 0.0
    with open(ledger_path, "a", buffering=1) as ledger:
        gen = 0
        while not os.path.exists(stop):
            gen += 1
            block = rng.randrange(blocks)
            data = (f"block {block} generation {gen} ".encode() * 200)[:BLOCK]
            buf.seek(0)
            buf.write(data)
            start = time.monotonic()
            try:
                os.pwrite(fd, buf, block * BLOCK)
                os.fsync(fd)
            except OSError:
                ledger.write(f"{block} {hashlib.sha256(data).hexdigest()} maybe\n")
                failed += 1
                time.sleep(0.05)
                continue
            worst = max(worst, time.monotonic() - start)
            ledger.write(f"{block} {hashlib.sha256(data).hexdigest()} acked\n")
            acked += 1
    print(f"acked={acked} failed={failed} worst_stall_ms={int(worst * 1000)}")


def verify(dev, ledger_path):
    allowed = {}  # block -> the digests it may hold
    with open(ledger_path) as ledger:
        for line in ledger:
            block, digest, kind = line.split()
            if kind == "acked":
                allowed[int(block)] = {digest}
            elif int(block) in allowed:
                allowed[int(block)].add(digest)
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)
    lost = 0
    for block, digests in sorted(allowed.items()):
        os.preadv(fd, [buf], block * BLOCK)
        if hashlib.sha256(buf[:]).hexdigest() not in digests:
            lost += 1
    print(f"blocks={len(allowed)} lost={lost}")
    return 1 if lost else 0


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "write":
        write(*sys.argv[2:])
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "verify":
        return verify(*sys.argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
