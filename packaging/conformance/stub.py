#!/usr/bin/env python3
"""Stub program for the conformance harness (harness.py copies it into each scenario's stub dir
and links systemctl, systemd-run, ip, ... to it). Logs its argv as one JSON line, then imitates
just enough of the real program. Settings come from stub.json beside the link."""
import json, os, signal, subprocess, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "stub.json")) as f:
    _cfg = json.load(f)
LOG, UNITS, OUT, SIMPLE = _cfg["log"], _cfg["units"], _cfg["out"], _cfg["simple"]
FAULTS = _cfg.get("faults")
prog, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(LOG, "a") as f:
    f.write(json.dumps([prog] + args) + "\n")

def unit_file(name):
    name = name if "." in name else name + ".service"
    return os.path.join(UNITS, name)

def alive(name):
    try:
        with open("/proc/%s/stat" % open(unit_file(name)).read().strip()) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # zombies are dead
    except (OSError, IndexError):
        return False

def fault(name):
    """A failure the harness armed: FAULTS/<name> holds how many more calls fail."""
    path = os.path.join(FAULTS or "", name)
    try:
        with open(path) as f:
            left = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return False
    if left <= 0:
        return False
    with open(path, "w") as f:
        f.write(str(left - 1))
    return True

if prog == "ip":
    if "-j" in args or "-json" in args or "--json" in args:
        print("[]")
    sys.exit(0)
if prog in SIMPLE:
    code, out = SIMPLE[prog]
    sys.stdout.write(out)
    if code:
        sys.stderr.write("%s: not available in the conformance harness\n" % prog)
    sys.exit(code)
if prog == "systemctl":
    # Transient units this stub's systemd-run started can be stopped and queried; everything
    # else (daemon-reload, enable --now of timers, ...) just succeeds.
    verb = next((a for a in args if not a.startswith("-")), "")
    units = [a for a in args[args.index(verb) + 1:] if not a.startswith("-")] if verb else []
    known = [u for u in units if os.path.exists(unit_file(u))]
    if fault("systemctl-" + verb):
        sys.stderr.write("Failed to %s unit: fault armed by the conformance harness\n" % verb)
        sys.exit(1)
    if verb in ("stop", "kill", "disable") and known:
        for u in known:
            try:
                os.killpg(int(open(unit_file(u)).read()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
    elif verb == "is-active" and known:
        up = all(alive(u) for u in known)
        print("\n".join(("active" if alive(u) else "inactive") for u in known))
        sys.exit(0 if up else 3)
    sys.exit(0)
if prog == "systemd-run":
    VALUE = {"-p", "--property", "-u", "--unit", "--slice", "--description", "-E", "--setenv",
             "--uid", "--gid", "--working-directory", "-M", "--machine", "-H", "--host",
             "--nice", "--service-type", "--timer-property", "--path-property",
             "--socket-property", "--on-active", "--on-boot", "--on-startup",
             "--on-unit-active", "--on-unit-inactive", "--on-calendar"}
    fg, timer, unit, setenv, cwd, i = False, False, None, {}, "/", 0
    while i < len(args) and args[i].startswith("-"):
        name, eq, val = args[i].partition("=")
        if name == "--":
            i += 1
            break
        if name in VALUE and not eq:
            i += 1
            val = args[i]
        fg = fg or name in ("--wait", "--pipe", "-P", "--pty", "-t")
        timer = timer or name.startswith("--on-")
        unit = val if name in ("-u", "--unit") else unit
        if name in ("-E", "--setenv"):
            k, has, v = val.partition("=")
            setenv[k] = v if has else os.environ.get(k, "")
        cwd = val if name == "--working-directory" else (os.getcwd() if name == "--same-dir" else cwd)
        i += 1
    cmd = args[i:]
    if timer or not cmd:
        sys.exit(0)
    # A real service unit gets systemd's environment, not ours: drop what the agent passed to
    # the handler. IBDRIVER_* and PATH stay, so a worker can never act on the real host.
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("AZURE_GUEST_AGENT_") or k.startswith("Config"))}
    env.update(setenv)
    if "--scope" in args[:i]:   # a scope runs the command itself, in our environment
        sys.exit(subprocess.call(cmd, env=dict(os.environ, **setenv)))
    if fg:
        sys.exit(subprocess.call(cmd, env=env, cwd=cwd))
    with open(OUT, "ab") as out:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=out, start_new_session=True)
    os.makedirs(UNITS, exist_ok=True)
    with open(unit_file(unit or "run-%d" % p.pid), "w") as f:
        f.write(str(p.pid))
    sys.exit(0)
