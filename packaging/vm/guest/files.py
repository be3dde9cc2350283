#!/usr/bin/env python3
"""Guest-side file inventory (of TOPS), for "uninstall leaves only what the README lists".

`files.py snapshot OUT` records every path on the root filesystem (but the volatile trees).
`files.py left BEFORE ALLOWED...` prints each path present now but not in BEFORE that no
installed package owns (dpkg's lists) and that is not under an ALLOWED prefix; exit 1 if any.
"""
import glob
import os
import sys

VOLATILE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/mnt", "/var/cache",
            "/var/lib/apt", "/var/lib/dpkg", "/var/log/journal", "/var/lib/systemd",
            "/var/log/apt", "/var/log/dpkg.log", "/etc/ld.so.cache", "/var/lib/ucf",
            "/var/log/alternatives.log", "/etc/machine-id", "/var/lib/dbus")


# Where anything of ours could be left: not /usr, which only packages fill (and /usr/local).
TOPS = ("/etc", "/var", "/opt", "/root", "/srv", "/home", "/boot", "/usr/local")


def walk():
    for top, dirs, files in (w for t in TOPS for w in os.walk(t)):
        if top.startswith(VOLATILE):
            dirs[:] = []
            continue
        for f in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            p = os.path.join(top, f)
            if not p.startswith(VOLATILE):
                yield p


def owned():
    paths = set()
    for lst in glob.glob("/var/lib/dpkg/info/*.list"):
        paths.update(line.rstrip("\n") for line in open(lst, errors="replace"))
    # Merged /usr: dpkg lists /lib/x, the walk finds /usr/lib/x.
    return paths | {"/usr" + p for p in paths if p.startswith(("/lib", "/bin", "/sbin"))}


def of_package(path, pkg):
    """Listed by dpkg, or a link a maintainer script made to a file dpkg lists (update-rc.d's
    /etc/rc?.d links, deb-systemd-helper's .wants links)."""
    if path in pkg:
        return True
    if os.path.islink(path):
        target = os.path.realpath(path)
        return target in pkg or target.replace("/usr/lib/", "/lib/", 1) in pkg
    return False


def main():
    if sys.argv[1] == "snapshot":
        with open(sys.argv[2], "w") as f:
            f.write("\n".join(sorted(walk())) + "\n")
        return 0
    before = set(open(sys.argv[2]).read().split("\n"))
    allowed = tuple(sys.argv[3:])
    pkg = owned()
    extra = [p for p in sorted(walk()) if p not in before and not of_package(p, pkg)
             and not p.startswith(allowed)]
    for p in extra:
        print(p)
    return 1 if extra else 0


sys.exit(main())
