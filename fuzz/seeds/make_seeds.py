#!/usr/bin/env python3
"""Write the fuzz seed corpora from real frames and real configs.

RTU frames come from ../shared/reference/modbus-rtu.md and kstar/crc-check.txt (the two
misprinted CRCs included: they are what a real bus carries when a device has that bug).
Run from the repository root: python3 fuzz/seeds/make_seeds.py [path/to/shared/reference]
"""
import os, re, struct, sys

ref = sys.argv[1] if len(sys.argv) > 1 else "../shared/reference"
root = os.path.dirname(os.path.abspath(__file__))

def crc16(b):
    c = 0xFFFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
    return c

def with_crc(b):
    return bytes(b) + struct.pack("<H", crc16(b))

def out(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

frames = []
for fn in ("modbus-rtu.md", "kstar/crc-check.txt"):
    text = open(os.path.join(ref, fn)).read()
    for m in re.finditer(r"((?:\b[0-9A-F]{2} ){3,}[0-9A-F]{2}\b)", text):
        b = bytes.fromhex(m.group(1))
        if b not in frames:
            frames.append(b)

# rtu_framer: unit, chunk seed (2), follow-up address (2), stream.
hdr = bytes([1, 0, 0, 0x0B, 0xB8])
for i, f in enumerate(frames):
    out("rtu_framer", f"frame{i:02}", hdr + f)
out("rtu_framer", "all_frames", hdr + b"".join(frames))
inverter = with_crc([1, 3, 0x20, 0x34, 0, 1]) + with_crc([1, 3, 0, 0, 0, 74]) + with_crc([1, 4, 0, 74, 0, 74])
out("rtu_framer", "plenticore_poll", hdr + inverter)
shared = with_crc([5, 3, 0, 0, 0, 2]) + with_crc([5, 3, 4, 0, 1, 0, 2]) + b"\xff\x00\x13" + inverter
out("rtu_framer", "shared_bus", bytes([1, 7, 0, 0, 0]) + shared)
out("rtu_framer", "broadcast", hdr + with_crc([0, 6, 0, 1, 0, 2]) + with_crc([0, 16, 0, 0, 0, 1, 2, 0, 9]))
out("rtu_framer", "unit250", bytes([250, 3, 0, 0, 5]) + with_crc([250, 4, 0, 7, 0, 2]))

# push_server: MBAP frames as the KSEM sends them, plus reads and refused writes.
def mbap(tid, pdu, unit=1):
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu

def fc16(addr, words):
    return struct.pack(">BHHB", 16, addr, len(words), 2 * len(words)) + b"".join(struct.pack(">H", w) for w in words)

ksem = mbap(1, fc16(0, list(range(28)))) + mbap(2, fc16(40, list(range(106))))
out("push_server", "ksem_push", ksem)
out("push_server", "reads", mbap(3, struct.pack(">BHH", 3, 0, 10)) + mbap(4, struct.pack(">BHH", 4, 8192, 58)) + mbap(5, struct.pack(">BHH", 3, 0, 126)))
out("push_server", "refused", mbap(6, fc16(512 - 1, [1, 2])) + mbap(7, fc16(8192, [1])) + mbap(8, struct.pack(">BHH", 6, 146, 7)))
out("push_server", "fc06", mbap(9, struct.pack(">BHH", 6, 30, 0xBEEF)))
out("push_server", "other_fc", mbap(10, bytes([0x11])) + mbap(11, struct.pack(">BHH", 1, 0, 8)) + mbap(12, bytes([0x41, 1, 2])))
out("push_server", "energy", mbap(13, fc16(512, [7] * 40)))

# config_parse: the shipped config and profiles.
repo = os.path.dirname(os.path.dirname(root))
out("config_parse", "gateway.yaml", open(os.path.join(repo, "gateway.yaml"), "rb").read())
pdir = os.path.join(repo, "profiles")
for fn in sorted(os.listdir(pdir)):
    if fn.endswith(".yaml"):
        out("config_parse", fn, open(os.path.join(pdir, fn), "rb").read())
out("config_parse", "minimal.yaml", b"rtu: {device: /dev/ttyUSB0}\nregions:\n  - {name: id, start: 8192, count: 58, source: static, values: {8244: 200}}\n")
print(f"{len(frames)} RTU frames")
