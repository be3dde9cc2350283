#!/usr/bin/env python3
"""Conformance harness: the real Azure Linux guest agent code drives a handler zip.

Uses Debian's waagent 2.7.3.0 (`azurelinuxagent`, made available by fetch_waagent.sh) with a
minimal fake protocol (docs PROTOCOL.md section 10), so install/enable/disable/uninstall run
exactly as the agent runs them and every assertion is made on what the agent itself would
upload (report_ext_handlers_status + vm_status_to_v1, collect_ext_status, collect_heartbeat).

    harness.py --zip dist/H-V.zip --work target/conformance/run [--scenario NAME ...]

Prints "PASS name" / "FAIL name: reason" per scenario, then "N passed, M failed";
exits 1 if any scenario failed, 2 on a setup error. See README.md beside this file.
"""
import argparse
import base64
import copy
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
import xml.etree.ElementTree as ET
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_AGENT_PATH = os.path.join(REPO, "target/conformance/waagent/root/usr/lib/python3/dist-packages")

SECRET = "S3cretPw"
PROTECTED = {"proxy": "http://user:%s@127.0.0.1:3128" % SECRET}
POLL_TIMEOUT, POLL_INTERVAL = 30.0, 0.5   # status polling: bounded, like CRP but much shorter
CMD_TIMEOUT = 120                         # clamp on the agent's 300/900 s command timeouts
IMDS_COMPUTE = {
    "vmSize": "Standard_HB120rs_v3", "name": "conformance-vm", "location": "southcentralus",
    "osType": "Linux", "vmId": "00000000-0000-4000-8000-000000000001",
    "securityProfile": {"secureBootEnabled": "false", "virtualTpmEnabled": "false"},
    "storageProfile": {"imageReference": {"publisher": "Debian", "offer": "debian-12",
                                          "sku": "12-gen2", "version": "latest"}},
}
# Stub programs put first on PATH: (exit code, stdout). Besides the ones the handler needs,
# anything that could change the real machine (we run as root) is stubbed too. Package managers
# fail: "drivers present" must be expressed by the fixture host tree, not by this machine.
SIMPLE_STUBS = {
    "ip": None,  # special-cased: `ip -j ...` prints []
    **{n: (0, "") for n in ("reboot", "shutdown", "poweroff", "halt", "modprobe", "rmmod",
                            "insmod", "depmod", "dkms", "update-initramfs", "dracut")},
    **{n: (1, "") for n in ("apt-get", "apt", "dpkg", "yum", "dnf", "tdnf", "zypper", "rpm")},
}


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def oneline(text, limit=300):
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- agent code and fake protocol
def import_agent(path):
    if path:
        sys.path.insert(0, path)
    global conf, exthandlers, restapi, wire, event, logger, AGENT_VERSION
    from azurelinuxagent.common import conf, event, logger
    from azurelinuxagent.common.protocol import restapi, wire
    from azurelinuxagent.common.version import AGENT_VERSION
    from azurelinuxagent.common.utils import textutil
    from azurelinuxagent.ga import exthandlers
    # 2.7.3.0 calls traceback.format_exception(etype=...), removed in Python 3.10, so every
    # error path that formats an exception (e.g. run()'s) dies with TypeError on Debian 12's
    # Python 3.11 too. Same output, current signature:
    textutil.format_exception = lambda e: "%s\n%s" % (e, "".join(traceback.format_exception(
        type(e), e, e.__traceback__)))
    # A status read failure is retried 5x with 2 s sleeps; we poll ourselves instead.
    if hasattr(exthandlers, "_STATUS_FILE_RETRY_DELAY"):
        exthandlers._STATUS_FILE_RETRY_DELAY = 0
    # Keep a hanging handler from stalling the run for the agent's 5/15 minutes.
    launch = exthandlers.ExtHandlerInstance.launch_command

    def clamped(self, cmd, cmd_name=None, *args, **kwargs):
        if not args:
            kwargs["timeout"] = min(kwargs.get("timeout", 300), CMD_TIMEOUT)
        return launch(self, cmd, cmd_name, *args, **kwargs)
    exthandlers.ExtHandlerInstance.launch_command = clamped


class FakeProtocol:
    """What ExtHandlersHandler calls on its protocol (2.7.3.0 names; 2.15 ones where free).
    Agent cgroups stay off: CGroupConfigurator is never initialize()d, so commands run via
    plain Popen + setsid, as on a VM without systemd cgroup support."""

    def __init__(self, zip_path):
        self.zip_path = zip_path
        self.client = self           # 2.7 calls protocol.client.get_goal_state() etc.
        self.incarnation = 0
        self.egs = None
        self.vm_status = None

    def set_extensions(self, extensions):
        self.incarnation += 1        # a new goal state is what makes CRP's change visible
        inc = str(self.incarnation)
        self.egs = types.SimpleNamespace(
            extensions=extensions, id=inc, incarnation=inc, activity_id="act-" + inc,
            correlation_id="corr-" + inc, created_on_timestamp="2024-01-01T00:00:00Z",
            channel="WireServer", source="Fabric", svd_sequence_number=inc,
            required_features=[], on_hold=False)

    def get_endpoint(self):
        # Exported to commands as AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS; loopback keeps any
        # accidental wire-server call on this machine.
        return "127.0.0.1"

    def get_extensions_goal_state(self):
        return self.egs

    def get_goal_state(self):
        return types.SimpleNamespace(incarnation=self.egs.id, extensions_goal_state=self.egs,
                                     history=None, fetch_extension_manifest=self._manifest)

    def _manifest(self, *_):
        return types.SimpleNamespace(pkg_list=self._pkgs(self.egs.extensions[0].version))

    def get_ext_handler_pkgs(self, ext_handler):
        return self._pkgs(ext_handler.version)

    def _pkgs(self, version):
        pkg = restapi.ExtHandlerPackage(version=version)
        pkg.uris = [self.zip_path]   # must be non-empty; "downloaded" by copying
        pkgs = restapi.ExtHandlerPackageList()
        pkgs.versions.append(pkg)
        return pkgs

    def download_ext_handler_pkg(self, uri, destination):
        # Only reached when lib/H__V.zip is missing (e.g. re-install after uninstall); answering
        # False would make the agent sleep 60 s per retry.
        shutil.copyfile(uri, destination)
        return True

    def get_incarnation(self):
        return self.egs.id

    def get_status_blob_data(self):
        return None

    def report_vm_status(self, vm_status):
        self.vm_status = vm_status


# ---------------------------------------------------------------- fake IMDS and stub programs
class ImdsHandler(BaseHTTPRequestHandler):
    """Answers like IMDS: Metadata header and api-version required, proxied requests refused."""

    def do_GET(self):
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        if self.headers.get("Metadata", "").lower() != "true" or "X-Forwarded-For" in self.headers:
            return self._send(400, {"error": "Bad request. Required metadata header not specified"})
        if "api-version" not in parse_qs(url.query):
            return self._send(400, {"error": "Bad request. api-version was not specified in the request"})
        if path == "/metadata/instance/compute":
            return self._send(200, IMDS_COMPUTE)
        if path == "/metadata/instance":
            return self._send(200, {"compute": IMDS_COMPUTE, "network": {"interface": []}})
        return self._send(404, {"error": "Not found"})

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


def start_imds():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImdsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return "http://127.0.0.1:%d" % server.server_address[1]


def write_stubs(stub_dir, log, units, out):
    """stub.py (beside this file) as stub_dir/_stub, run by this interpreter, linked under
    every stubbed program's name."""
    os.makedirs(stub_dir)
    main = os.path.join(stub_dir, "_stub")
    with open(os.path.join(HERE, "stub.py")) as f:
        code = f.read().split("\n", 1)[1]
    with open(main, "w") as f:
        f.write("#!%s\n%s" % (sys.executable, code))
    os.chmod(main, 0o755)
    simple = {k: v for k, v in SIMPLE_STUBS.items() if v is not None}
    with open(os.path.join(stub_dir, "stub.json"), "w") as f:
        json.dump({"log": log, "units": units, "out": out, "simple": simple}, f)
    for name in ["systemctl", "systemd-run"] + list(SIMPLE_STUBS):
        os.symlink("_stub", os.path.join(stub_dir, name))


# ---------------------------------------------------------------- certificates (real openssl)
def openssl(*args, data=None):
    return subprocess.run(["openssl"] + list(args), input=data, capture_output=True,
                          check=True, timeout=60).stdout


def make_cert(directory):
    os.makedirs(directory, exist_ok=True)
    crt, key = os.path.join(directory, "cert.crt"), os.path.join(directory, "cert.prv")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=test", "-days", "2",
            "-keyout", key, "-out", crt)
    fp = openssl("x509", "-noout", "-fingerprint", "-sha1", "-in", crt).decode()
    return crt, key, fp.split("=", 1)[1].strip().replace(":", "").upper()


def encrypt(crt, cipher):
    # The plaintext goes through a pipe only, so no file of ours ever holds the secret.
    der = openssl("cms", "-encrypt", "-outform", "DER", "-" + cipher, crt,
                  data=json.dumps(PROTECTED).encode())
    return base64.b64encode(der).decode()


# ---------------------------------------------------------------- one scenario's world
class Ctx:
    def __init__(self, opts, scenario, host):
        self.opts, self.name, self.version = opts, opts.name, opts.version
        self.dir = os.path.join(os.path.abspath(opts.work), scenario)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.lib, self.log = os.path.join(self.dir, "lib"), os.path.join(self.dir, "log")
        self.host = os.path.join(self.dir, "host")
        for d in (self.lib, self.log, os.path.join(self.dir, "events")):
            os.makedirs(d)
        # The handler writes into its host root, so every scenario gets its own copy.
        shutil.copytree(os.path.join(opts.hosts, host), self.host, symlinks=True)
        # Present as a systemd host, so the worker goes through the systemd-run stub and the
        # health timer's units are written (and must be gone after uninstall).
        os.makedirs(os.path.join(self.host, "run/systemd/system"), exist_ok=True)
        stubs = os.path.join(self.dir, "stubs")
        self.stub_log = os.path.join(self.dir, "stub-calls.log")
        write_stubs(stubs, self.stub_log, os.path.join(self.dir, "stub-units"),
                    os.path.join(self.dir, "stub-units.out"))
        # The agent merges its own environment into every command's (its vars lose to ours).
        os.environ.update(IBDRIVER_ROOT=self.host, IBDRIVER_IMDS_URL=opts.imds_url,
                          PATH=stubs + os.pathsep + opts.base_path)
        # conf must point at our dirs before any handler object is created.
        conf.__conf__.values.update({"Lib.Dir": self.lib, "Extension.LogDir": self.log})
        event.init_event_logger(os.path.join(self.dir, "events"))
        logger.DEFAULT_LOGGER.appenders = []
        logger.add_logger_appender(logger.AppenderType.FILE, logger.LogLevel.VERBOSE,
                                   path=os.path.join(self.dir, "agent.log"))
        # Pre-placed package: the agent reuses lib/H__V.zip instead of downloading.
        shutil.copyfile(opts.zip, os.path.join(self.lib, "%s__%s.zip" % (self.name, self.version)))
        self.protocol = FakeProtocol(os.path.abspath(opts.zip))
        self.agent = None
        self.base = os.path.join(self.lib, "%s-%s" % (self.name, self.version))
        self.cmdlog = os.path.join(self.log, self.name, "CommandExecution.log")

    def goal_state(self, seq, public, protected=None, thumb=None, state="enabled"):
        ext = restapi.Extension(name=self.name)
        ext.version, ext.state = self.version, state
        ext.settings.append(restapi.ExtensionSettings(
            name=self.name, sequenceNumber=seq, publicSettings=public,
            protectedSettings=protected, certificateThumbprint=thumb))
        self.protocol.set_extensions([ext])

    def run_agent(self):
        """One agent (re)start or new goal state: a fresh ExtHandlersHandler processes the
        current goal state. Returns the handler-level status the agent recorded right after
        (later reports may overwrite its message, e.g. from a missing heartbeat)."""
        self.agent = exthandlers.ExtHandlersHandler(self.protocol)
        self.agent.run()
        return self.instance().get_handler_status()

    def instance(self):
        return exthandlers.ExtHandlerInstance(copy.deepcopy(self.protocol.egs.extensions[0]),
                                              self.protocol)

    def settings(self):
        return self.protocol.egs.extensions[0].settings[0]

    def report(self):
        """One status report as CRP would receive it: our handlerAggregateStatus entry or None."""
        vm_status = self.agent.report_ext_handlers_status()
        check(vm_status is not None, "report_ext_handlers_status failed (see agent.log)")
        v1 = wire.vm_status_to_v1(vm_status)
        found = [h for h in v1["aggregateStatus"]["handlerAggregateStatus"]
                 if h.get("handlerName") == self.name]
        return found[0] if found else None

    def wait_terminal(self, seq, want_ready=False):
        """Polls reports until the settings status for `seq` is success/error (and, with
        want_ready, a success is accompanied by handler status Ready)."""
        deadline, rep = time.monotonic() + POLL_TIMEOUT, None
        while time.monotonic() < deadline:
            rep = self.report()
            st = settings_status(rep)
            if st and rep["runtimeSettingsStatus"].get("sequenceNumber") == seq and \
                    st.get("status") in ("success", "error") and \
                    (not want_ready or st["status"] != "success" or rep.get("status") == "Ready"):
                return rep
            time.sleep(POLL_INTERVAL)
        raise Fail("no terminal status for seq %s within %ds; last report: %s"
                   % (seq, POLL_TIMEOUT, describe(rep)))

    def commands(self):
        """Full command lines as the agent runs them, from the zip's own manifest."""
        with zipfile.ZipFile(self.opts.zip) as z:
            name = next(n for n in z.namelist() if n.endswith("HandlerManifest.json"))
            man = json.loads(z.read(name).decode("utf-8-sig"))[0]["handlerManifest"]
        return {v: os.path.join(self.base, man[v + "Command"].lstrip("/"))
                for v in ("install", "enable", "disable", "uninstall", "update")}

    def runs(self, verb):
        """Line numbers in CommandExecution.log where the agent started `verb`."""
        marker = "Executing command: %s with " % self.commands()[verb]
        if not os.path.exists(self.cmdlog):
            return []
        with open(self.cmdlog, errors="replace") as f:
            return [i for i, line in enumerate(f) if marker in line]

    def processes(self, needle):
        found = []
        for d in glob.glob("/proc/[0-9]*"):
            try:
                with open(d + "/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmd and int(d[6:]) != os.getpid():
                found.append((int(d[6:]), cmd.strip()))
        return found

    def cleanup(self):
        # Detached workers we (through the agent) started: end them by pid, not by name.
        for pid, _ in self.processes(self.dir + "/"):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def files_containing(self, needle):
        hits = []
        for root, _, files in os.walk(self.dir):
            for fn in files:
                p = os.path.join(root, fn)
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as f:
                        if needle.encode() in f.read():
                            hits.append(os.path.relpath(p, self.dir))
        return hits


def settings_status(rep):
    return ((rep or {}).get("runtimeSettingsStatus") or {}).get("settingsStatus", {}).get("status")


def describe(rep):
    if rep is None:
        return "handler not reported"
    st = settings_status(rep) or {}
    return oneline("handler %s/%s %r; settings seq %s %s/%s %r" % (
        rep.get("status"), rep.get("code"), (rep.get("formattedMessage") or {}).get("message"),
        (rep.get("runtimeSettingsStatus") or {}).get("sequenceNumber"), st.get("status"),
        st.get("code"), (st.get("formattedMessage") or {}).get("message")), 600)


def handler_status_text(hs):
    return "none" if hs is None else oneline("%s/%s %r" % (hs.status, hs.code, hs.message))


# ---------------------------------------------------------------- assertions shared by scenarios
def enable_healthy(ctx, seq=0, public=None, protected=None, thumb=None):
    ctx.goal_state(seq, {} if public is None and protected is None else public, protected, thumb)
    hs = ctx.run_agent()
    check(hs is not None and hs.code == 0 and hs.status == "Ready",
          "install/enable failed at handler level: " + handler_status_text(hs))
    rep = ctx.wait_terminal(seq, want_ready=True)
    st = settings_status(rep)
    check(st["status"] == "success", "expected success, got " + describe(rep))
    names = [s.get("name") or "" for s in st.get("substatus") or []]
    check(any("health" in n.lower() for n in names), "no health substatus in %r" % names)
    # A heartbeat problem is persisted during one report but only shows in the next one.
    rep = ctx.report()
    check(rep.get("status") == "Ready", "handler status not Ready: " + describe(rep))
    try:
        hb = ctx.instance().collect_heartbeat()
    except Exception as e:  # ExtensionError: heartbeat file missing or malformed
        raise Fail("collect_heartbeat(): %s" % e)
    check(hb is not None and hb.get("status") == "Ready", "collect_heartbeat() -> %r" % (hb,))
    # Cross-check with the agent's direct reader (same parser, no reporting path).
    es = ctx.instance().collect_ext_status(ctx.settings())
    check(es.status == "success", "collect_ext_status -> %s/%s" % (es.status, es.code))
    return rep


def restart_is_noop(ctx, seq=0):
    """Agent restart/reboot: enable runs again with the same N; the handler must not redo work."""
    path = os.path.join(ctx.base, "status", "%d.status" % seq)
    check(os.path.isfile(path), "missing status/%d.status" % seq)
    with open(path, "rb") as f:
        before = (f.read(), os.stat(path).st_mtime_ns)
    enables = len(ctx.runs("enable"))
    ctx.run_agent()
    check(len(ctx.runs("enable")) == enables + 1, "agent did not re-run enable after restart")
    time.sleep(1.5)   # give anything enable started in the background time to write
    with open(path, "rb") as f:
        after = (f.read(), os.stat(path).st_mtime_ns)
    check(after[0] == before[0], "%d.status content changed after restart-enable" % seq)
    check(after[1] == before[1], "%d.status rewritten (mtime changed) after restart-enable" % seq)
    rep = ctx.wait_terminal(seq, want_ready=True)
    check(settings_status(rep)["status"] == "success", "after restart: " + describe(rep))


def expect_failure(ctx, hs, exit_code, codes):
    text = handler_status_text(hs)
    check(hs is not None and hs.code == 1009, "expected handler code 1009, got " + text)
    check("Non-zero exit code: %d," % exit_code in (hs.message or ""),
          "expected enable exit code %d: %s" % (exit_code, text))
    rep = ctx.wait_terminal(ctx.settings().sequenceNumber)
    st = settings_status(rep)
    check(st["status"] == "error" and isinstance(st.get("code"), int) and st["code"] in codes,
          "expected status error with code in %s, got %s" % (codes, describe(rep)))
    with open(ctx.cmdlog, errors="replace") as f:
        logged = f.read() + (hs.message or "")
    for bad in ("Traceback (most recent call last)", "panicked"):
        check(bad not in logged, "handler output contains %r" % bad)


def no_secret(ctx):
    hits = ctx.files_containing(SECRET)
    check(not hits, "plaintext secret found in " + ", ".join(hits))


# ---------------------------------------------------------------- scenarios
def events_valid(ctx):
    """The agent's own collector must accept every event the handler dropped in eventsFolder."""
    from azurelinuxagent.ga.collect_telemetry_events import _ProcessExtensionEvents
    folder = os.path.join(ctx.log, ctx.name, "events")
    written = 0
    for f in os.listdir(folder):
        with open(os.path.join(folder, f)) as fh:
            doc = json.load(fh)
        written += len(doc) if isinstance(doc, list) else 1
    check(written > 0, "the handler wrote no telemetry event")
    collected = []
    sink = types.SimpleNamespace(enqueue_event=collected.append, stopped=lambda: False)
    _ProcessExtensionEvents(sink)._capture_extension_events(ctx.name, folder)
    check(len(collected) == written, "agent accepted %d of %d events" % (len(collected), written))
    check(not os.listdir(folder), "agent left event files behind")


def sc_healthy(ctx):
    enable_healthy(ctx)
    events_valid(ctx)
    restart_is_noop(ctx)


def protected_healthy(cipher):
    def run(ctx):
        crt, key, thumb = make_cert(os.path.join(ctx.dir, "certs"))
        # PROTOCOL.md 3.3: the agent keeps <THUMB>.crt/.prv in Lib.Dir (= configFolder/../..).
        shutil.copyfile(crt, os.path.join(ctx.lib, thumb + ".crt"))
        shutil.copyfile(key, os.path.join(ctx.lib, thumb + ".prv"))
        os.chmod(os.path.join(ctx.lib, thumb + ".prv"), 0o600)
        enable_healthy(ctx, public=None, protected=encrypt(crt, cipher), thumb=thumb)
        restart_is_noop(ctx)
        no_secret(ctx)
    return run


def sc_new_settings(ctx):
    enable_healthy(ctx, seq=0)
    ctx.goal_state(1, {"ipoib": "off"})
    hs = ctx.run_agent()
    check(hs.code == 0, "enable for seq 1 failed: " + handler_status_text(hs))
    rep = ctx.wait_terminal(1)
    check(settings_status(rep)["status"] == "success", "seq 1: " + describe(rep))


def sc_no_device(ctx):
    ctx.goal_state(0, {})
    expect_failure(ctx, ctx.run_agent(), 11, [11])


def sc_bad_settings(ctx):
    ctx.goal_state(0, {"stack": "auto", "bogus": 1})
    expect_failure(ctx, ctx.run_agent(), 1, range(100, 200))


def sc_bad_protected(ctx):
    crt_a, _, _ = make_cert(os.path.join(ctx.dir, "cert-a"))   # A's key never reaches lib/
    crt_b, key_b, thumb_b = make_cert(os.path.join(ctx.dir, "cert-b"))
    shutil.copyfile(crt_b, os.path.join(ctx.lib, thumb_b + ".crt"))
    shutil.copyfile(key_b, os.path.join(ctx.lib, thumb_b + ".prv"))
    ctx.goal_state(0, {}, encrypt(crt_a, "des3"), thumb_b)
    expect_failure(ctx, ctx.run_agent(), 1, range(100, 200))
    no_secret(ctx)


def sc_disable_uninstall(ctx):
    enable_healthy(ctx)
    before = glob.glob(os.path.join(ctx.host, "etc/systemd/system/ibdriver-health.*"))
    check(len(before) == 2, "health monitor units not installed by enable: %s" % before)
    disables, uninstalls = len(ctx.runs("disable")), len(ctx.runs("uninstall"))
    ctx.goal_state(0, {}, state="uninstall")
    ctx.run_agent()
    d, u = ctx.runs("disable"), ctx.runs("uninstall")
    check(len(d) == disables + 1, "agent did not run disable (see agent.log)")
    check(len(u) == uninstalls + 1 and u[-1] > d[-1], "agent did not run uninstall after disable")
    check(not os.path.exists(ctx.base), "handler dir still present: " + ctx.base)
    rep = ctx.report()
    check(rep is None, "handler still reported: " + describe(rep))
    binary = ctx.commands()["enable"].split()[0]
    deadline = time.monotonic() + 3   # grace for processes that got a signal during disable
    while ctx.processes(binary) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = ctx.processes(binary)
    check(not left, "handler processes still running: %s" % oneline(left))
    units = glob.glob(os.path.join(ctx.host, "etc/systemd/system/*ibdriver*"))
    check(not units, "unit files left: %s" % [os.path.relpath(u, ctx.host) for u in units])


SCENARIOS = [  # name, fixture host, function
    ("healthy", "hbv3", sc_healthy),
    ("healthy-protected-3des", "hbv3", protected_healthy("des3")),
    ("healthy-protected-aes256", "hbv3", protected_healthy("aes256")),
    ("new-settings", "hbv3", sc_new_settings),
    ("no-device", "dseries", sc_no_device),
    ("bad-settings", "hbv3", sc_bad_settings),
    ("bad-protected", "hbv3", sc_bad_protected),
    ("disable-uninstall", "hbv3", sc_disable_uninstall),
]


# ---------------------------------------------------------------- CLI
def default_identity(zip_path):
    """Handler name/version: manifest/manifest.xml (what build.sh publishes), else the
    dist/<Name>-<Version>.zip file name."""
    path = os.path.join(REPO, "manifest", "manifest.xml")
    if os.path.isfile(path):
        fields = {el.tag.rsplit("}", 1)[-1]: (el.text or "").strip() for el in ET.parse(path).iter()}
        if fields.get("ProviderNameSpace") and fields.get("Type") and fields.get("Version"):
            return fields["ProviderNameSpace"] + "." + fields["Type"], fields["Version"]
    m = re.match(r"^(.+)-(\d+(?:\.\d+)*)\.zip$", os.path.basename(zip_path))
    return (m.group(1), m.group(2)) if m else (None, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zip", required=True, help="handler package to test")
    ap.add_argument("--work", required=True, help="scratch dir; one subdir per scenario")
    ap.add_argument("--hosts", default=os.path.join(REPO, "tests/fixtures/hosts"),
                    help="fixture host roots: DIR/hbv3 (drivers present), DIR/dseries (no IB)")
    ap.add_argument("--name", help="handler name Publisher.Type (default: manifest.xml)")
    ap.add_argument("--version", help="handler version (default: manifest.xml)")
    ap.add_argument("--scenario", action="append", help="run only these (repeatable)")
    ap.add_argument("--imds-url", help="use this IMDS instead of the built-in fake")
    ap.add_argument("--agent-path", default=os.environ.get("WAAGENT_PYTHONPATH", DEFAULT_AGENT_PATH),
                    help="dir holding azurelinuxagent (fetch_waagent.sh prints it)")
    opts = ap.parse_args()
    name, version = default_identity(opts.zip)
    opts.name, opts.version = opts.name or name, opts.version or version
    try:
        check(os.path.isfile(opts.zip), "no such zip: " + opts.zip)
        check(opts.name and opts.version, "handler name/version unknown: pass --name/--version")
        check(shutil.which("openssl"), "openssl not found on PATH")
        for host in {h for _, h, _ in SCENARIOS}:
            check(os.path.isdir(os.path.join(opts.hosts, host)), "missing fixture host %s/%s"
                  % (opts.hosts, host))
        try:
            import_agent(opts.agent_path if os.path.isdir(opts.agent_path) else None)
        except ImportError as e:
            raise Fail("cannot import azurelinuxagent (%s): run fetch_waagent.sh and pass "
                       "--agent-path" % e)
        wanted = opts.scenario or [n for n, _, _ in SCENARIOS]
        unknown = set(wanted) - {n for n, _, _ in SCENARIOS}
        check(not unknown, "unknown scenario(s): %s" % ", ".join(sorted(unknown)))
    except Fail as e:
        print("harness setup error: %s" % e, file=sys.stderr)
        return 2
    opts.zip = os.path.abspath(opts.zip)
    opts.hosts = os.path.abspath(opts.hosts)
    opts.base_path = os.environ.get("PATH", "/usr/bin:/bin")
    opts.imds_url = opts.imds_url or start_imds()
    print("agent %s, handler %s %s, work %s" % (AGENT_VERSION, opts.name, opts.version,
                                                 os.path.abspath(opts.work)), flush=True)
    passed = failed = 0
    for scenario, host, fn in SCENARIOS:
        if scenario not in wanted:
            continue
        ctx = None
        try:
            ctx = Ctx(opts, scenario, host)
            fn(ctx)
            print("PASS %s" % scenario, flush=True)
            passed += 1
        except Fail as e:
            print("FAIL %s: %s" % (scenario, oneline(e, 1000)), flush=True)
            failed += 1
        except Exception as e:  # a harness or agent-API problem, reported the same way
            print("FAIL %s: %s: %s" % (scenario, type(e).__name__, oneline(e)), flush=True)
            traceback.print_exc(file=sys.stderr)
            failed += 1
        finally:
            if ctx is not None:
                ctx.cleanup()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
