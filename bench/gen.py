#!/usr/bin/env python3
"""Generates the benchmark data set and its modifications.

gen.py create DIR GIB        half incompressible (random), half mixed (zeros, log-like text,
                             random) in a database-like image and a directory of log files
gen.py scattered DIR PERCENT overwrite PERCENT of all bytes with random 4 KiB writes at
                             random 4 KiB-aligned offsets (a database changing pages)
gen.py clustered DIR PERCENT the same in 256 KiB extents
gen.py smallfiles DIR COUNT  COUNT files of around 8 KiB (1 to 16 KiB) in thousands of
                             directories (about 30 files each, two levels), a third of them
                             compressible text, the rest random
gen.py churn DIR PERCENT     a day of small-file churn: PERCENT of the files rewritten, as many
                             again added, half as many deleted
"""
import os, random, sys

MIB = 1 << 20
rng = random.Random(20261127)

WORDS = [b"GET", b"POST", b"/api/v1/orders", b"/healthz", b"200", b"404", b"500", b"user=", b"latency_ms=",
         b"INFO", b"WARN", b"ERROR", b"replica", b"checkpoint", b"flushed", b"pages", b"txid=", b"zone-a", b"zone-b"]

def log_block(n):
    out = bytearray()
    i = rng.randrange(1 << 30)
    while len(out) < n:
        i += rng.randrange(1, 50)
        line = b"2026-11-27T10:%02d:%02d.%03dZ %s %s %s%d %s%d\n" % (
            (i // 60000) % 60, (i // 1000) % 60, i % 1000, rng.choice(WORDS), rng.choice(WORDS),
            rng.choice(WORDS), rng.randrange(100000), rng.choice(WORDS), rng.randrange(1000))
        out += line
    return bytes(out[:n])

def create(root, gib):
    total = int(gib * 1024) * MIB
    half = total // 2
    os.makedirs(os.path.join(root, "random"), exist_ok=True)
    os.makedirs(os.path.join(root, "mixed", "logs"), exist_ok=True)
    # Incompressible: a few large files (media, encrypted, compressed archives).
    per = half // 4
    for i in range(4):
        with open(os.path.join(root, "random", f"blob{i}.bin"), "wb") as f:
            left = per
            while left:
                n = min(left, 64 * MIB)
                f.write(os.urandom(n))
                left -= n
    # Mixed: a database-like image of zeros, text and random segments, and log files.
    image = half // 2
    with open(os.path.join(root, "mixed", "db.img"), "wb") as f:
        text = log_block(8 * MIB)
        for seg in range(image // MIB):
            kind = seg % 4
            if kind == 0:
                f.seek(MIB, 1)  # never written: a hole, as in a preallocated database file
            elif kind in (1, 2):
                off = rng.randrange(0, 7 * MIB)
                f.write(text[off:off + MIB])
            else:
                f.write(os.urandom(MIB))
        f.truncate(image)
    logs = half - image
    size = 2 * MIB
    for i in range(logs // size):
        with open(os.path.join(root, "mixed", "logs", f"app-{i:04d}.log"), "wb") as f:
            f.write(log_block(size))

def files(root):
    out = []
    for d, _, names in os.walk(root):
        for n in sorted(names):
            p = os.path.join(d, n)
            out.append((p, os.path.getsize(p)))
    return sorted(out)

def overwrite(root, percent, extent):
    fs = files(root)
    total = sum(s for _, s in fs)
    writes = int(total * percent / 100) // extent
    weights = [s for _, s in fs]
    handles = {}
    for _ in range(writes):
        p, s = rng.choices(fs, weights=weights)[0]
        if s < extent:
            continue
        off = rng.randrange(0, (s - extent) // 4096 + 1) * 4096
        f = handles.get(p) or open(p, "r+b")
        handles[p] = f
        f.seek(off)
        f.write(os.urandom(extent))
    for f in handles.values():
        f.close()
    print(f"{writes} writes of {extent} bytes = {writes * extent} bytes changed of {total}")

def small_content(i):
    size = rng.randrange(1024, 16 * 1024 + 1)
    return log_block(size) if i % 3 == 0 else os.urandom(size)

def smallfiles(root, count):
    for i in range(count):
        d = os.path.join(root, f"d{i // 900:03d}", f"s{(i // 30) % 30:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(small_content(i))

def churn(root, percent):
    fs = [p for p, _ in files(root)]
    n = max(1, int(len(fs) * percent / 100))
    for p in rng.sample(fs, n):
        with open(p, "wb") as f:
            f.write(small_content(rng.randrange(3)))
    for k in range(n):
        d = os.path.join(root, "new", f"n{k // 30:04d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{k:06d}"), "wb") as f:
            f.write(small_content(k))
    for p in rng.sample(fs, n // 2):
        if os.path.exists(p):
            os.remove(p)
    print(f"{n} files rewritten, {n} added, {n // 2} deleted of {len(fs)}")

if __name__ == "__main__":
    cmd, root = sys.argv[1], sys.argv[2]
    if cmd == "create":
        create(root, float(sys.argv[3]))
    elif cmd == "scattered":
        overwrite(root, float(sys.argv[3]), 4096)
    elif cmd == "clustered":
        overwrite(root, float(sys.argv[3]), 256 * 1024)
    elif cmd == "smallfiles":
        smallfiles(root, int(sys.argv[3]))
    elif cmd == "churn":
        churn(root, float(sys.argv[3]))
    else:
        sys.exit(__doc__)
