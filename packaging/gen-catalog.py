#!/usr/bin/env python3
"""Regenerate manifest/catalog.json from an artifact list (ofed-artifacts.json: stack, version, URL, SHA-256).

The catalog keeps what the handler needs to choose and verify a driver artifact: stack, version,
the distro key it was built for, arch, package kind, URL, SHA-256 and whether Azure's HPC images
still pin it ("current"). Source tarballs and entries that only existed in comments are left out.
Usage: packaging/gen-catalog.py PATH-TO-ofed-artifacts.json
"""
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
if len(sys.argv) != 2:
    sys.exit(__doc__)
src = sys.argv[1]
data = json.load(open(src))
entries = []
for a in data["artifacts"]:
    if a.get("commented_out") or a["os_token"] is None:
        continue
    entries.append({
        "stack": a["stack"],
        "version": a["version"],
        "distro": a["distro"],
        "distro_version": a["distro_version"],
        "arch": a["arch"],
        "kind": a["kind"],
        "url": a["url"],
        "sha256": a["sha256"],
        "current": bool(a.get("at_head")),
    })
entries.sort(key=lambda e: (e["stack"], e["distro"], e["distro_version"], e["arch"], e["version"]))
out = {
    "schema": 1,
    "source": "Azure/azhpc-images versions.json and install scripts, via shared/data/ofed-artifacts.json",
    "entries": entries,
}
path = os.path.join(here, "../manifest/catalog.json")
with open(path + ".tmp", "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
os.replace(path + ".tmp", path)
print(f"{len(entries)} entries -> {os.path.relpath(path)}")
