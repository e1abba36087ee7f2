#!/usr/bin/env python3
"""Regenerate profiles/*.yaml from the register maps extracted from the vendor documents.

    python3 profiles/from_reference.py ../shared/reference profiles

The reference maps list each register with the function codes the document gives (`fc`);
the gateway's profile schema (src/control/profile/) names the table instead: `function: input`
(read with 04H), `function: holding` (03H), and `writes: [6]`/`[16]` for writable ones.
Write-only registers (06H/10H only: commands and set-points) are placed in the holding
table, where a Modbus write lands. Reserved spans are left out (unlisted words decode to
nothing), repeat blocks are expanded, and enum keys that are not plain numbers
("19-31 (0x13-0x1F)": reserve) are dropped. A name a map gives twice is renamed (RENAMES),
and each profile gets the `short_name` its Home Assistant entity ids start with.
"""
import sys
import yaml

KEEP = ("label", "unit", "range", "note")

# Names the reference maps give twice in one profile. Every value name (a register's, or a
# byte's of a u8pair) must be unique: it is the key in the MQTT state message and the Home
# Assistant entity id (the gateway refuses a profile that repeats one). The first use keeps
# its name, so existing entities keep theirs. Keyed by (function, address, "name"|"hi"|"lo").
RENAMES = {
    # Input 3227 repeats the DSP/ARM versions of holding 3216/3217 (hi bytes).
    "kstar-hybrid.yaml": {
        ("input", 3227, "hi"): "dsp_version_input",
        ("input", 3227, "lo"): "arm_version_input",
    },
    # The u8pair register is named like its own high byte.
    "kstar-ksg1-250k.yaml": {("holding", 3230, "name"): "dsp2_version_full"},
}


def table(fc, access):
    fc = set(fc or [])
    if 4 in fc:
        return "input"
    return "holding"


def writes(fc, access):
    if access == "r":
        return None
    return sorted(c for c in (fc or []) if c in (6, 16)) or None


def clean_table(t):
    return {k: str(v) for k, v in (t or {}).items() if isinstance(k, int)}


def convert_entry(r, out, prefix=""):
    if r["name"].startswith("reserved"):
        return
    kind = r["type"]
    e = {"name": prefix + r["name"], "address": r["address"]}
    e["function"] = r["function"]
    e["type"] = kind
    if kind in ("ascii", "bcd"):
        e["words"] = r["words"]
    if r.get("scale", 1) not in (1, None) and kind not in ("ascii", "u8pair"):
        e["scale"] = r["scale"]
    if r.get("unit"):
        e["unit"] = r["unit"]
    if r.get("access", "r") != "r":
        e["access"] = r["access"]
        w = writes(r.get("fc"), r["access"])
        if w:
            if 6 in w and (kind in ("ascii", "bcd") and r.get("words", 1) > 1 or kind in ("u32", "s32", "u64")):
                w = [c for c in w if c != 6] or [16]
            e["writes"] = w
    rng = r.get("range")
    if rng is not None and kind not in ("ascii", "u8pair"):
        if isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, int) for v in rng):
            e["range"] = rng
        else:  # "0-rated power": not checkable; keep the words
            r = dict(r, note=f"range {rng}. " + (r.get("note") or ""))
    for k in ("enum", "bits"):
        v = r.get(k)
        if isinstance(v, str):
            e[k] = v
        elif isinstance(v, dict):
            t = clean_table(v)
            if t:
                e[k] = t
    if kind == "u8pair":
        for k in ("hi", "lo"):
            b = r.get(k) or {"name": k}
            nb = {"name": prefix + b.get("name", k)}
            if b.get("unit"):
                nb["unit"] = b["unit"]
            if b.get("scale") not in (None, 1):
                nb["scale"] = b["scale"]
            e[k] = nb
    for k in ("label", "note"):
        if r.get(k):
            e[k] = r[k]
    if r.get("uncertain"):
        e["note"] = ("UNCERTAIN in the document. " + e.get("note", "")).strip()
    out.append(e)


def rename(regs, renames):
    for e in regs:
        for part in ("name", "hi", "lo"):
            new = renames.pop((e["function"], e["address"], part), None)
            if new is None:
                continue
            if part == "name":
                e["name"] = new
            else:
                e[part]["name"] = new
    if renames:
        sys.exit(f"renames that match no register: {renames}")


def convert(ref, name, short, function_default):
    regs = []
    for r in ref["registers"]:
        r = dict(r)
        r["function"] = table(r.get("fc"), r.get("access")) if "fc" in r else function_default
        if r["type"] == "block":
            rep = r["repeat"]
            inner = r.get("inner_repeat")
            for n in range(rep["count"]):
                base = rep["first"] + n * rep["stride"]
                points = range(inner["count"]) if inner else [None]
                for k in points:
                    for f in r["fields"]:
                        f = dict(f)
                        off = f.pop("offset")
                        if k is None:
                            f["address"] = base + off
                            prefix = f"{r['name']}{n + 1}_"
                        else:
                            f["address"] = base + inner["first_offset"] + k * inner["stride"] + off
                            prefix = f"{r['name']}_pv{n + 1}_point{k + 1}_"
                        f["function"] = r["function"]
                        f.setdefault("access", r.get("access", "r"))
                        convert_entry(f, regs, prefix)
            continue
        convert_entry(r, regs)
    prof = {"name": name, "short_name": short, "source": ref.get("source") or ref.get("device")}
    for k in ("enums", "bits"):
        if ref.get(k):
            prof[k] = {n: clean_table(t) for n, t in ref[k].items()}
    prof["registers"] = regs
    return prof


def dump(prof, path, header):
    with open(path, "w") as f:
        f.write(header)
        f.write(f"name: {yaml.safe_dump(prof['name'], width=1000).splitlines()[0]}\n")
        f.write(f"short_name: {prof['short_name']}\n")
        f.write(f"source: {yaml.safe_dump(prof['source'], width=1000).splitlines()[0]}\n")
        for k in ("enums", "bits"):
            if k in prof:
                f.write(f"{k}:\n")
                for n, t in prof[k].items():
                    f.write(f"  {n}: {yaml.safe_dump(t, default_flow_style=True, width=100000, allow_unicode=True).strip()}\n")
        f.write("registers:\n")
        for e in prof["registers"]:
            f.write(f"  - {yaml.safe_dump(e, default_flow_style=True, sort_keys=False, width=100000, allow_unicode=True).strip()}\n")


HEADER = """# {title}
# Generated by profiles/from_reference.py from {src}; schema: src/control/profile/.
# function: input = read with 04H, holding = read with 03H. writes: the function codes that
# write the register. access: r, rw, w (w = documented only under 06H/10H: commands and
# set-points). Multi-word numbers are high word first. physical = raw * scale [unit];
# range is raw. `airbridge profile show {file}` lists it.
"""

if __name__ == "__main__":
    ref_dir, out_dir = sys.argv[1], sys.argv[2]
    jobs = [
        ("ksem-g2.yaml", "ksem-g2.yaml", "KOSTAL Smart Energy Meter G2 (KSEM)", "ksem", "holding"),
        ("kstar/kstar-hybrid.yaml", "kstar-hybrid.yaml", "KSTAR hybrid inverter (KSE, BluE-S, BlueSpark, E-KT), protocol V2.9.1", "kstar", "input"),
        ("kstar/kstar-ksg1-60k.yaml", "kstar-ksg1-60k.yaml", "KSTAR KSG1 string inverter 1-60 kW, protocol V1.8", "kstar", "input"),
        ("kstar/kstar-ksg1-250k.yaml", "kstar-ksg1-250k.yaml", "KSTAR KSG1 string inverter up to 250 kW, protocol V3.5", "kstar", "input"),
    ]
    for src, dst, name, short, default in jobs:
        ref = yaml.safe_load(open(f"{ref_dir}/{src}"))
        prof = convert(ref, name, short, default)
        rename(prof["registers"], dict(RENAMES.get(dst, {})))
        dump(prof, f"{out_dir}/{dst}", HEADER.format(title=name, src=f"shared/reference/{src}", file=f"profiles/{dst}"))
        print(dst, len(prof["registers"]), "registers")
