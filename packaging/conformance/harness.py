#!/usr/bin/env python3
"""Conformance harness: the real Azure Linux guest agent code drives a handler zip.

Imports one agent line per run: Debian's waagent 2.7.3.0 (made available by fetch_waagent.sh)
or upstream 2.15.0.1 (upstream_agent.sh), with a minimal fake protocol that answers that line's
calls (described in README.md), so install/enable/disable/uninstall run exactly as that agent
runs them and every assertion is made on what the agent itself would upload
(report_ext_handlers_status + vm_status_to_v1, collect_ext_status, collect_heartbeat).

    harness.py --zip dist/H-V.zip --work target/conformance/run --agent-path DIR [--scenario NAME ...]

Prints "PASS <agent version>/<scenario>" / "FAIL <agent version>/<scenario>: reason" per
scenario, then "N passed, M failed"; exits 1 if any scenario failed, 2 on a setup error.
See README.md beside this file.
"""
import argparse
import base64
import copy
import glob
import hashlib
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
                            "insmod", "depmod", "dkms", "update-initramfs", "dracut", "rdma")},
    **{n: (1, "") for n in ("apt-get", "apt", "apt-mark", "dpkg", "yum", "dnf", "tdnf", "zypper",
                            "rpm")},
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
    """Imports one agent line's code (one per process: both lines are `azurelinuxagent`) and
    returns the names of the patches it needed."""
    if path:
        sys.path.insert(0, path)
    global conf, exthandlers, restapi, wire, event, logger, AGENT_VERSION
    from azurelinuxagent.common import conf, event, logger
    from azurelinuxagent.common.protocol import restapi, wire
    from azurelinuxagent.common.version import AGENT_VERSION
    from azurelinuxagent.ga import exthandlers
    patches = ["format_exception"] if fix_format_exception() else []
    # A status read failure is retried 5x with 2 s sleeps; we poll ourselves instead.
    exthandlers._STATUS_FILE_RETRY_DELAY = 0
    clamp_command_timeouts()
    return patches


def fix_format_exception():
    """2.7.3.0 calls traceback.format_exception(etype=...), removed in Python 3.10, so every
    error path that formats an exception (e.g. run()'s) dies with TypeError on Debian 12's
    Python 3.11 too. When the agent's own function fails that way, it gets one with the same
    output and the current signature (2.15.0.1's works as it is). Returns whether it patched."""
    from azurelinuxagent.common.utils import textutil
    try:
        raise ValueError("probe")
    except ValueError as e:
        try:
            textutil.format_exception(e)
            return False
        except TypeError:
            pass
    textutil.format_exception = lambda e: "%s\n%s" % (e, "".join(traceback.format_exception(
        type(e), e, e.__traceback__)))
    return True


def clamp_command_timeouts():
    """Keeps a hanging handler from stalling the run for the agent's 5/15 minutes."""
    launch = exthandlers.ExtHandlerInstance.launch_command

    def clamped(self, cmd, cmd_name=None, *args, **kwargs):
        if not args:
            kwargs["timeout"] = min(kwargs.get("timeout", 300), CMD_TIMEOUT)
        return launch(self, cmd, cmd_name, *args, **kwargs)
    exthandlers.ExtHandlerInstance.launch_command = clamped


class FakeProtocol:
    """What ExtHandlersHandler calls on its protocol, common to both lines; the subclasses add
    exactly one line's names, so a call the other line would make fails loudly.
    Agent cgroups stay off: CGroupConfigurator is never initialize()d, so commands run via
    plain Popen + setsid, as on a VM without systemd cgroup support."""

    def __init__(self, zip_path, versions):
        self.zip_path = zip_path
        self.versions = versions     # what the handler manifest lists (all from the one zip)
        self.client = self           # both lines reach part of the wire client through it
        self.incarnation = 0
        self.egs = None
        self.vm_status = None
        self.downloads = 0           # packages "downloaded" (the zip was not in lib/ yet)

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

    def _pkgs(self):
        pkgs = restapi.ExtHandlerPackageList()
        for version in self.versions:
            pkg = restapi.ExtHandlerPackage(version=version)
            pkg.uris = [self.zip_path]   # must be non-empty; "downloaded" by copying
            pkgs.versions.append(pkg)
        return pkgs

    def report_vm_status(self, vm_status):
        self.vm_status = vm_status


class Protocol27(FakeProtocol):
    """2.7.3.0: goal state pieces and packages come from protocol methods; every report also
    writes lib/waagent_status.<incarnation>.json (get_incarnation, get_status_blob_data)."""

    def get_extensions_goal_state(self):
        return self.egs

    def get_goal_state(self):    # called as protocol.client.get_goal_state().incarnation
        return types.SimpleNamespace(incarnation=self.egs.id)

    def get_ext_handler_pkgs(self, ext_handler):
        return self._pkgs()

    def download_ext_handler_pkg(self, uri, destination):
        # Only reached when lib/H__V.zip is missing; answering False would make the agent
        # sleep 60 s per retry. The agent unzips it and keeps the zip.
        shutil.copyfile(uri, destination)
        self.downloads += 1
        return True

    def get_incarnation(self):
        return self.egs.id

    def get_status_blob_data(self):
        return None


class Protocol215(FakeProtocol):
    """2.15.0.1: everything hangs off get_goal_state() (extensions_goal_state, history,
    fetch_extension_manifest); packages come through client.download_zip_package."""

    def get_goal_state(self):
        return types.SimpleNamespace(extensions_goal_state=self.egs, history=None,
                                     fetch_extension_manifest=self._manifest)

    def _manifest(self, name, uris):
        return types.SimpleNamespace(pkg_list=self._pkgs())

    def download_zip_package(self, package_name, uris, target_file, target_directory,
                             use_verify_header, signature, enforce_signature):
        # Only reached when lib/H__V.zip is missing. The agent's own unzip, which deletes the zip.
        shutil.copyfile(uris[0], target_file)
        self.downloads += 1
        wire.WireClient._try_expand_zip_package(package_name, target_file, target_directory)


# What differs between the agent lines this harness knows (README, "The two agent lines"). A
# version not listed is a setup error: nobody has checked its source against these.
#   heartbeat_message: the report replaces the handler-level message with heartbeat.log's
#                      formattedMessage (2.7.3.0 copies only the heartbeat's status)
#   keeps_download:    lib/<Name>__<Version>.zip stays after a download (2.15.0.1 deletes it)
LINES = {
    "2.7.3.0": types.SimpleNamespace(protocol=Protocol27, heartbeat_message=False,
                                     keeps_download=True),
    "2.15.0.1": types.SimpleNamespace(protocol=Protocol215, heartbeat_message=True,
                                      keeps_download=False),
}
LINE = None   # the entry of LINES for the imported agent


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


def write_stubs(stub_dir, log, units, out, faults):
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
        json.dump({"log": log, "units": units, "out": out, "simple": simple, "faults": faults}, f)
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


def next_version(version):
    """1.0.0 -> 1.0.1: the second version the update scenarios install."""
    parts = version.split(".")
    return ".".join(parts[:-1] + [str(int(parts[-1]) + 1)])


# ---------------------------------------------------------------- one scenario's world
class Ctx:
    def __init__(self, opts, scenario, host):
        self.opts, self.name, self.version = opts, opts.name, opts.version
        # Update scenarios use a second version made from the same zip: the package carries no
        # version of its own (the agent's directory name and AZURE_GUEST_AGENT_EXTENSION_VERSION
        # tell the handler which version it is).
        self.versions = [opts.version, next_version(opts.version)]
        self.dir = os.path.join(os.path.abspath(opts.work), AGENT_VERSION, scenario)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.lib, self.log = os.path.join(self.dir, "lib"), os.path.join(self.dir, "log")
        self.host = os.path.join(self.dir, "host")
        for d in (self.lib, self.log, os.path.join(self.dir, "events")):
            os.makedirs(d)
        # The handler writes into its host root, so every scenario gets its own copy.
        shutil.copytree(os.path.join(opts.hosts, host), self.host, symlinks=True)
        # Present as a systemd host, so the worker goes through the systemd-run stub and the
        # health timer's units are written (and must be gone after uninstall).
        for d in ("run/systemd/system", "etc/systemd/system"):
            os.makedirs(os.path.join(self.host, d), exist_ok=True)
        stubs = os.path.join(self.dir, "stubs")
        self.stub_log = os.path.join(self.dir, "stub-calls.log")
        self.faults = os.path.join(self.dir, "faults")
        os.makedirs(self.faults)
        write_stubs(stubs, self.stub_log, os.path.join(self.dir, "stub-units"),
                    os.path.join(self.dir, "stub-units.out"), self.faults)
        # The agent merges its own environment into every command's (its vars lose to ours).
        os.environ.update(IBDRIVER_ROOT=self.host, IBDRIVER_IMDS_URL=opts.imds_url,
                          PATH=stubs + os.pathsep + opts.base_path)
        # conf must point at our dirs before any handler object is created.
        conf.__conf__.values.update({"Lib.Dir": self.lib, "Extension.LogDir": self.log})
        event.init_event_logger(os.path.join(self.dir, "events"))
        logger.DEFAULT_LOGGER.appenders = []
        logger.add_logger_appender(logger.AppenderType.FILE, logger.LogLevel.VERBOSE,
                                   path=os.path.join(self.dir, "agent.log"))
        # Pre-placed packages: the agent reuses lib/H__V.zip instead of downloading.
        for v in self.versions:
            shutil.copyfile(opts.zip, os.path.join(self.lib, "%s__%s.zip" % (self.name, v)))
        self.protocol = LINE.protocol(os.path.abspath(opts.zip), self.versions)
        self.agent = None
        self.cmdlog = os.path.join(self.log, self.name, "CommandExecution.log")

    def base_for(self, version):
        return os.path.join(self.lib, "%s-%s" % (self.name, version))

    @property
    def base(self):
        """The handler dir of the version the current goal state asks for."""
        return self.base_for(self.version)

    def arm(self, fault, times=1):
        """Make the next `times` calls of a stub fault fail (see stub.py)."""
        with open(os.path.join(self.faults, fault), "w") as f:
            f.write(str(times))

    def goal_state(self, seq, public, protected=None, thumb=None, state="enabled", version=None):
        self.version = version or self.version
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

    def commands(self, version=None):
        """Full command lines as the agent runs them, from the zip's own manifest."""
        with zipfile.ZipFile(self.opts.zip) as z:
            name = next(n for n in z.namelist() if n.endswith("HandlerManifest.json"))
            man = json.loads(z.read(name).decode("utf-8-sig"))[0]["handlerManifest"]
        base = self.base_for(version or self.version)
        return {v: os.path.join(base, man[v + "Command"].lstrip("/"))
                for v in ("install", "enable", "disable", "uninstall", "update")}

    def runs(self, verb, version=None):
        """Line numbers in CommandExecution.log where the agent started `verb` of `version`."""
        return [i for i, _ in self.runs_env(verb, version)]

    def runs_env(self, verb, version=None):
        """(line number, environment the agent added) for each start of `verb` of `version`."""
        marker = "Executing command: %s with environment variables: " % self.commands(version)[verb]
        if not os.path.exists(self.cmdlog):
            return []
        with open(self.cmdlog, errors="replace") as f:
            return [(i, json.loads(line.split(marker, 1)[1]))
                    for i, line in enumerate(f) if marker in line]

    def stub_calls(self, prog):
        """Logged argv lists of one stub program."""
        if not os.path.exists(self.stub_log):
            return []
        with open(self.stub_log) as f:
            return [c for c in map(json.loads, f) if c[0] == prog]

    def host_snapshot(self):
        """Every path under the host root: file content hash, 'dir' or the link target."""
        snap = {}
        for root, dirs, files in os.walk(self.host):
            for n in dirs + files:
                p = os.path.join(root, n)
                rel = os.path.relpath(p, self.host)
                if os.path.islink(p):
                    snap[rel] = "link:" + os.readlink(p)
                elif os.path.isdir(p):
                    snap[rel] = "dir"
                else:
                    with open(p, "rb") as f:
                        snap[rel] = hashlib.sha256(f.read()).hexdigest()
        return snap

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


def reported_message(rep):
    return ((rep or {}).get("formattedMessage") or {}).get("message") or ""


def heartbeat_message(ctx):
    """heartbeat.log's message, read by the agent's own collector."""
    try:
        hb = ctx.instance().collect_heartbeat()
    except Exception as e:  # ExtensionError: heartbeat file missing or malformed
        raise Fail("collect_heartbeat(): %s" % e)
    return ((hb or {}).get("formattedMessage") or {}).get("message") or ""


def check_handler_message(ctx, rep, agent_says):
    """The handler-level message CRP shows. 2.15.0.1 puts the handler's heartbeat message there
    on every report (so that message must carry what the customer needs, a failure's cause
    included); 2.7.3.0 keeps the agent's own message, which contains `agent_says`."""
    got = reported_message(rep)
    if LINE.heartbeat_message:
        hb = heartbeat_message(ctx)
        check(hb and got == hb, "%s reports the heartbeat's message %r, got %r"
              % (AGENT_VERSION, hb, got))
    else:
        check(agent_says in got, "%s reports its own message (%r), got %r"
              % (AGENT_VERSION, agent_says, got))


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
    check_handler_message(ctx, rep, "Plugin enabled")
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
    check(rep.get("status") == "NotReady", "handler status after a failed enable: " + describe(rep))
    check_handler_message(ctx, rep, "Non-zero exit code: %d," % exit_code)
    if LINE.heartbeat_message:   # the cause the settings status gives is what CRP shows
        cause = (st.get("formattedMessage") or {}).get("message") or ""
        check(cause.startswith(reported_message(rep)), "handler message %r is not the cause %r"
              % (reported_message(rep), cause))
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
    # A fresh VM: the package is not in lib/ yet, so the agent gets it through the protocol.
    package = os.path.join(ctx.lib, "%s__%s.zip" % (ctx.name, ctx.version))
    os.remove(package)
    enable_healthy(ctx)
    check(ctx.protocol.downloads == 1, "agent downloads: %d, expected 1" % ctx.protocol.downloads)
    check(os.path.exists(package) == LINE.keeps_download, "%s %s the downloaded package" % (
        AGENT_VERSION, "deleted" if LINE.keeps_download else "kept"))
    events_valid(ctx)
    restart_is_noop(ctx)


def protected_healthy(cipher):
    def run(ctx):
        crt, key, thumb = make_cert(os.path.join(ctx.dir, "certs"))
        # docs/PROTOCOL.md, "Protected settings": the agent keeps <THUMB>.crt/.prv in Lib.Dir
        # (= configFolder/../..).
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


# What disable + uninstall leave of ours under the host root (README "Disable, uninstall,
# update"): the summary log, and the directories that hold it. The agent-owned log folder lives
# outside the host root here (WORK/log), and the drivers are the fixture's own files.
DOCUMENTED_LEFT = {"var/log/azure/ib-vmext-status"}
# System directories configure may have had to create in the fixture root (every systemd distro
# ships them); left empty, never with a file of ours in them.
SYSTEM_DIRS = {"etc/modules-load.d"}
DATA_DIR = "var/lib/infiniband-driver-linux"


def assert_clean(ctx, before):
    """After uninstall: no process of ours, and the host root holds exactly what it held before
    the first goal state plus the documented files (nothing changed, nothing removed)."""
    binary = os.path.join(ctx.lib, ctx.name + "-")   # any version's handler binary
    deadline = time.monotonic() + 3   # grace for processes that got a signal during disable
    while ctx.processes(binary) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = ctx.processes(binary)
    check(not left, "handler processes still running: %s" % oneline(left))
    after = ctx.host_snapshot()
    parents = {os.path.dirname(p) for p in DOCUMENTED_LEFT}
    parents |= {os.path.dirname(p) for p in parents}
    allowed = DOCUMENTED_LEFT | {p for p in parents if p and p not in before}
    added = set(after) - set(before)
    allowed |= {p for p in SYSTEM_DIRS if p in added and os.path.isdir(os.path.join(ctx.host, p))
                and not os.listdir(os.path.join(ctx.host, p))}
    check(added == allowed, "host root gained %s, expected exactly %s"
          % (sorted(added), sorted(allowed)))
    removed = sorted(set(before) - set(after))
    check(not removed, "host root lost %s (drivers must stay)" % removed)
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    check(not changed, "host root files changed: %s" % changed)


def uninstall_goal_state(ctx):
    """A goal state asking to uninstall; returns the handler status right after run()."""
    ctx.goal_state(0, {}, state="uninstall")
    return ctx.run_agent()


def sc_disable_uninstall(ctx):
    before = ctx.host_snapshot()
    enable_healthy(ctx)
    units = glob.glob(os.path.join(ctx.host, "etc/systemd/system/ibdriver-health.*"))
    check(len(units) == 2, "health monitor units not installed by enable: %s" % units)
    disables, uninstalls = len(ctx.runs("disable")), len(ctx.runs("uninstall"))
    uninstall_goal_state(ctx)
    d, u = ctx.runs("disable"), ctx.runs("uninstall")
    check(len(d) == disables + 1, "agent did not run disable (see agent.log)")
    check(len(u) == uninstalls + 1 and u[-1] > d[-1], "agent did not run uninstall after disable")
    check(not os.path.exists(ctx.base), "handler dir still present: " + ctx.base)
    rep = ctx.report()
    check(rep is None, "handler still reported: " + describe(rep))
    assert_clean(ctx, before)


def sc_uninstall_after_failed_disable(ctx):
    before = ctx.host_snapshot()
    enable_healthy(ctx)
    ctx.arm("systemctl-disable")      # `systemctl disable --now ibdriver-health.timer` fails once
    uninstalls = len(ctx.runs("uninstall"))
    hs = uninstall_goal_state(ctx)
    text = handler_status_text(hs)
    check(hs is not None and hs.code == 1010, "expected handler code 1010, got " + text)
    check("Non-zero exit code: 14," in (hs.message or "") and "DisableFailed" in (hs.message or ""),
          "expected disable exit 14 with DisableFailed in the message: " + text)
    check(len(ctx.runs("uninstall")) == uninstalls, "agent ran uninstall after a failed disable")
    rep = ctx.report()
    check(rep is not None and rep.get("code") == 1010, "reported after the failed disable: "
          + describe(rep))
    # 2.15.0.1 shows the heartbeat's message here: a failed disable writes NotReady with its
    # cause, so the customer sees why and what to do, not enable's "RDMA ready".
    check_handler_message(ctx, rep, "DisableFailed")
    hb = heartbeat_message(ctx) or ""
    check("ibdriver-health" in hb and "RDMA ready" not in hb,
          "the heartbeat after a failed disable does not carry its cause: %r" % hb)
    check(os.path.isdir(ctx.base), "handler dir removed after a failed disable")
    units = glob.glob(os.path.join(ctx.host, "etc/systemd/system/ibdriver-health.*"))
    check(len(units) == 2, "unit files of a timer that could not be disabled are gone: %s" % units)
    # The next goal state retries the whole sequence: disable (succeeds now), then uninstall.
    disables = len(ctx.runs("disable"))
    uninstall_goal_state(ctx)
    d, u = ctx.runs("disable"), ctx.runs("uninstall")
    check(len(d) == disables + 1, "agent did not retry disable")
    check(len(u) == uninstalls + 1 and u[-1] > d[-1], "agent did not run uninstall after disable")
    check(not os.path.exists(ctx.base), "handler dir still present: " + ctx.base)
    check(ctx.report() is None, "handler still reported after uninstall")
    assert_clean(ctx, before)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def start_version(ctx, version):
    """Enable `version` to success; returns what must not change when a later version takes
    over without redoing work: the status file, the checkpoint, the workers started so far."""
    ctx.version = version
    enable_healthy(ctx)
    return (read(os.path.join(ctx.base, "status", "0.status")),
            read(os.path.join(ctx.host, DATA_DIR, "state.json")),
            len(ctx.stub_calls("systemd-run")))


def update_is_noop(ctx, old, new, kept, mark, old_enabled=True):
    """After a goal state moved the handler from `old` to `new` with the same settings: the
    agent's sequence since line `mark` of CommandExecution.log, and no work redone. The agent
    disables `old` only when it is still enabled (not on the retry of a failed update)."""
    downgrade = [int(x) for x in new.split(".")] < [int(x) for x in old.split(".")]
    # docs/PROTOCOL.md, "Update and downgrade": a downgrade runs A's (the installed) update.
    updater = old if downgrade else new
    steps = [("disable", old)] if old_enabled else []
    steps += [("update", updater), ("uninstall", old), ("install", new), ("enable", new)]
    lines = {}
    for verb, version in steps:
        found = [(i, env) for i, env in ctx.runs_env(verb, version) if i > mark]
        check(found, "agent did not run %s of %s after the update goal state" % (verb, version))
        lines[verb] = found[-1]
    if not old_enabled:
        check(not [i for i in ctx.runs("disable", old) if i > mark],
              "agent disabled the old version again")
    order = [lines[verb][0] for verb, _ in steps]
    check(order == sorted(order), "agent order %s, expected %s" % (order, steps))
    env = lines["update"][1]
    want = (new, new) if downgrade else (new, old)
    got = (env.get("VERSION"), env.get("AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"))
    check(got == want, "update env VERSION/UPDATING_FROM_VERSION %s, expected %s" % (got, want))
    check(not os.path.exists(ctx.base_for(old)), "old handler dir still present")
    status, state, workers = kept
    check(len(ctx.stub_calls("systemd-run")) == workers, "a worker was started after the update")
    check(read(os.path.join(ctx.host, DATA_DIR, "state.json")) == state,
          "the checkpoint changed: work was redone")
    check(read(os.path.join(ctx.base, "status", "0.status")) == status,
          "the status file was rewritten after the update")
    check(not os.path.exists(os.path.join(ctx.host, DATA_DIR, "update.json")),
          "update marker left behind")
    rep = ctx.wait_terminal(0, want_ready=True)
    check(settings_status(rep)["status"] == "success", "after the update: " + describe(rep))
    rep = ctx.report()
    check(rep.get("handlerVersion") == new and rep.get("status") == "Ready",
          "handler after the update: %s %s" % (rep.get("handlerVersion"), describe(rep)))
    svc = read(os.path.join(ctx.host, "etc/systemd/system/ibdriver-health.service")).decode()
    check(ctx.base + "/" in svc, "health monitor does not run the new version: " + oneline(svc))


def cmdlog_lines(ctx):
    if not os.path.exists(ctx.cmdlog):
        return 0
    with open(ctx.cmdlog, errors="replace") as f:
        return sum(1 for _ in f)


def version_change(first, second):
    def run(ctx):
        old, new = ctx.versions[first], ctx.versions[second]
        kept = start_version(ctx, old)
        mark = cmdlog_lines(ctx) - 1
        ctx.goal_state(0, {}, version=new)
        hs = ctx.run_agent()
        check(hs is not None and hs.code == 0 and hs.status == "Ready",
              "update failed at handler level: " + handler_status_text(hs))
        update_is_noop(ctx, old, new, kept, mark)
    return run


def sc_update_failed_retried(ctx):
    old, new = ctx.versions
    kept = start_version(ctx, old)
    # The marker cannot be written: a directory stands where update writes update.json, the
    # failure a full or read-only disk gives (root ignores permission bits, so no chmod).
    block = os.path.join(ctx.host, DATA_DIR, "update.json")
    os.makedirs(os.path.join(block, "in-the-way"))
    ctx.goal_state(0, {}, version=new)
    hs = ctx.run_agent()
    check(hs is not None and hs.code == 1008 and hs.status == "NotReady",
          "expected NotReady/1008 for a failed update, got " + handler_status_text(hs))
    check(os.path.isdir(ctx.base_for(old)), "old version removed after a failed update")
    with open(os.path.join(ctx.base, "config", "HandlerState")) as f:
        check(f.read().strip() == "FailedUpgrade", "new version not marked FailedUpgrade")
    rep = ctx.report()
    check(rep is not None and rep.get("code") == 1008, "reported after the failed update: "
          + describe(rep))
    shutil.rmtree(block)
    mark = cmdlog_lines(ctx) - 1
    ctx.goal_state(0, {}, version=new)   # the next goal state retries
    hs = ctx.run_agent()
    check(hs is not None and hs.code == 0 and hs.status == "Ready",
          "retried update failed at handler level: " + handler_status_text(hs))
    # The first attempt disabled the old version already: the retry skips its disable.
    update_is_noop(ctx, old, new, kept, mark, old_enabled=False)


SCENARIOS = [  # name, fixture host, function
    ("healthy", "hbv3", sc_healthy),
    ("healthy-protected-3des", "hbv3", protected_healthy("des3")),
    ("healthy-protected-aes256", "hbv3", protected_healthy("aes256")),
    ("new-settings", "hbv3", sc_new_settings),
    ("no-device", "dseries", sc_no_device),
    ("bad-settings", "hbv3", sc_bad_settings),
    ("bad-protected", "hbv3", sc_bad_protected),
    ("disable-uninstall", "hbv3", sc_disable_uninstall),
    ("uninstall-after-failed-disable", "hbv3", sc_uninstall_after_failed_disable),
    ("update-noop", "hbv3", version_change(0, 1)),
    ("downgrade-noop", "hbv3", version_change(1, 0)),
    ("update-failed-retried", "hbv3", sc_update_failed_retried),
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


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zip", required=True, help="handler package to test")
    ap.add_argument("--work", required=True, help="scratch dir; WORK/<agent version>/<scenario>")
    ap.add_argument("--hosts", default=os.path.join(REPO, "tests/fixtures/hosts"),
                    help="fixture host roots: DIR/hbv3 (drivers present), DIR/dseries (no IB)")
    ap.add_argument("--name", help="handler name Publisher.Type (default: manifest.xml)")
    ap.add_argument("--version", help="handler version (default: manifest.xml)")
    ap.add_argument("--scenario", action="append", help="run only these (repeatable)")
    ap.add_argument("--imds-url", help="use this IMDS instead of the built-in fake")
    ap.add_argument("--agent-path", help="dir holding azurelinuxagent (what fetch_waagent.sh or "
                    "upstream_agent.sh prints; default $WAAGENT_PYTHONPATH, else fetch_waagent.sh's)")
    opts = ap.parse_args()
    name, version = default_identity(opts.zip)
    opts.name, opts.version = opts.name or name, opts.version or version
    return opts


def load_line(agent_path):
    """Imports the agent from agent_path (never from elsewhere) and selects its line."""
    global LINE
    given = agent_path or os.environ.get("WAAGENT_PYTHONPATH") or DEFAULT_AGENT_PATH
    package = os.path.join(given, "azurelinuxagent")
    check(os.path.isdir(package), "no azurelinuxagent in %s: run fetch_waagent.sh (2.7.3.0) or "
          "upstream_agent.sh (2.15.0.1) and pass what it prints as --agent-path" % given)
    try:
        patches = import_agent(given)
    except ImportError as e:
        raise Fail("cannot import azurelinuxagent from %s: %s" % (given, e))
    import azurelinuxagent
    check(os.path.dirname(os.path.abspath(azurelinuxagent.__file__)) == os.path.abspath(package),
          "imported azurelinuxagent from %s, not from %s" % (azurelinuxagent.__file__, given))
    check(AGENT_VERSION in LINES, "agent %s is not one of the lines this harness knows (%s)"
          % (AGENT_VERSION, ", ".join(LINES)))
    LINE = LINES[AGENT_VERSION]
    return patches


def setup(opts):
    """Checks the inputs and imports the agent; returns the scenarios to run and the patches
    the agent needed. Raises Fail on a setup error."""
    check(os.path.isfile(opts.zip), "no such zip: " + opts.zip)
    check(opts.name and opts.version, "handler name/version unknown: pass --name/--version")
    check(shutil.which("openssl"), "openssl not found on PATH")
    for host in {h for _, h, _ in SCENARIOS}:
        check(os.path.isdir(os.path.join(opts.hosts, host)), "missing fixture host %s/%s"
              % (opts.hosts, host))
    wanted = opts.scenario or [n for n, _, _ in SCENARIOS]
    unknown = set(wanted) - {n for n, _, _ in SCENARIOS}
    check(not unknown, "unknown scenario(s): %s" % ", ".join(sorted(unknown)))
    return wanted, load_line(opts.agent_path)


def run_scenario(opts, scenario, host, fn):
    """Runs one scenario, prints its PASS/FAIL line (labelled with the agent line) and
    returns whether it passed."""
    label, ctx = "%s/%s" % (AGENT_VERSION, scenario), None
    try:
        ctx = Ctx(opts, scenario, host)
        fn(ctx)
        print("PASS %s" % label, flush=True)
        return True
    except Fail as e:
        print("FAIL %s: %s" % (label, oneline(e, 1000)), flush=True)
    except Exception as e:  # a harness or agent-API problem, reported the same way
        print("FAIL %s: %s: %s" % (label, type(e).__name__, oneline(e)), flush=True)
        traceback.print_exc(file=sys.stderr)
    finally:
        if ctx is not None:
            ctx.cleanup()
    return False


def main():
    opts = parse_args()
    try:
        wanted, patches = setup(opts)
    except Fail as e:
        print("harness setup error: %s" % e, file=sys.stderr)
        return 2
    opts.zip = os.path.abspath(opts.zip)
    opts.hosts = os.path.abspath(opts.hosts)
    opts.base_path = os.environ.get("PATH", "/usr/bin:/bin")
    opts.imds_url = opts.imds_url or start_imds()
    print("agent %s (patched: %s), handler %s %s, work %s" % (
        AGENT_VERSION, ", ".join(patches) or "nothing", opts.name, opts.version,
        os.path.join(os.path.abspath(opts.work), AGENT_VERSION)), flush=True)
    start, passed, failed = time.monotonic(), 0, 0
    for scenario, host, fn in SCENARIOS:
        if scenario in wanted:
            ok = run_scenario(opts, scenario, host, fn)
            passed, failed = passed + ok, failed + (not ok)
    print("agent %s: %d scenarios in %.0f s" % (AGENT_VERSION, passed + failed,
                                                 time.monotonic() - start))
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
