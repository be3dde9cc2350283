#!/usr/bin/env python3
"""Index a directory of .deb files as a flat apt repository: `repo-index.py DIR` writes
DIR/Packages and DIR/Release (for `deb [trusted=yes] URL ./`). Fields come from dpkg-deb."""
import hashlib
import os
import subprocess
import sys


def stanza(path, name):
    control = subprocess.run(["dpkg-deb", "-f", path], check=True, capture_output=True, text=True).stdout
    data = open(path, "rb").read()
    extra = [
        f"Filename: ./{name}",
        f"Size: {len(data)}",
        f"MD5sum: {hashlib.md5(data).hexdigest()}",
        f"SHA256: {hashlib.sha256(data).hexdigest()}",
    ]
    return control.rstrip("\n") + "\n" + "\n".join(extra) + "\n"


def main():
    root = sys.argv[1]
    debs = sorted(f for f in os.listdir(root) if f.endswith(".deb"))
    if not debs:
        sys.exit(f"repo-index.py: no .deb files in {root}")
    packages = "\n".join(stanza(os.path.join(root, f), f) for f in debs).encode()
    with open(os.path.join(root, "Packages"), "wb") as f:
        f.write(packages)
    digest = hashlib.sha256(packages).hexdigest()
    # apt wants a Date, and a past one (a future Date is "not valid yet").
    with open(os.path.join(root, "Release"), "w") as f:
        f.write(f"Origin: ibtest\nLabel: ibtest\nSuite: ibtest\nCodename: ibtest\n"
                f"Date: Sat, 01 Jan 2000 00:00:00 UTC\n"
                f"SHA256:\n {digest} {len(packages)} Packages\n")
    print(f"repo-index.py: {len(debs)} packages in {root}", file=sys.stderr)


main()
