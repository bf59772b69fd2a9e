#!/usr/bin/env python3
"""Parse RESULT lines from results/*.txt and print medians (of 3 runs) per measurement."""
import sys, statistics, collections
files = sys.argv[1:] or ["results/raw.txt"]
rows = []
for f in files:
    for line in open(f):
        if not line.startswith("RESULT"):
            continue
        parts = line.split()
        d = {"kind": parts[1]} if "=" not in parts[1] else {}
        for p in parts[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                d[k] = v
        if "kind" not in d:
            d["kind"] = [p for p in parts[1:] if "=" not in p][0]
        rows.append(d)
groupkeys = {"latency": ["store"], "group": ["store", "batch"], "space": ["store", "phase"],
             "scan": ["store", "cache"], "get": ["store", "pass"], "load": ["store"],
             "killtrial": ["big", "store"], "killtest": ["big", "store"], "enospc": ["store", "step"]}
g = collections.OrderedDict()
for d in rows:
    kk = groupkeys.get(d["kind"], ["store"])
    key = (d["kind"],) + tuple(f"{k}={d.get(k,'')}" for k in kk)
    g.setdefault(key, []).append(d)
def num(v):
    try: return float(v)
    except: return None
for key, ds in g.items():
    fields = [k for k in ds[0] if k not in ("kind","store","batch","phase","cache","pass","run","big","trial","step")]
    out = []
    for f in fields:
        vals = [num(d.get(f)) for d in ds]
        if all(v is not None for v in vals):
            med = statistics.median(vals)
            rng = f"[{min(vals):g}..{max(vals):g}]" if len(vals) > 1 else ""
            out.append(f"{f}={med:g}{rng}")
        else:
            out.append(f"{f}=" + "|".join(sorted(set(d.get(f,'') for d in ds))))
    print(" ".join(key), f"n={len(ds)}", " ".join(out))
