#!/usr/bin/env python3
"""A fake Azure fabric (WireServer + HostGAPlugin) on loopback for the real Linux guest agent.

Stdlib only (Python 3.11); certificates and CMS go through the `openssl` command line.
It serves one extension handler (ours) from a release zip, encrypts its protected settings to a
tenant certificate that it delivers to the agent in the Certificates document (CMS-enveloped to
the agent's own transport certificate, as Azure does), and decodes every status blob the agent
uploads (block or page blob, direct or through the HostGAPlugin's /status envelope) into a
directory: status-NNNNNN.json per upload, status-latest.json for the newest.

  wireserver.py serve --zip dist/OpenSource.HpcCompute.InfiniBandDriverLinux-1.0.0.zip \
      --state-dir /var/lib/wirefake [--public-settings JSON|@FILE] [--protected-settings JSON|@FILE]
  wireserver.py bump [--public-settings ...] [--protected-settings ...|--no-protected]
                     [--seqno N|--keep-seqno] [--state enabled|disabled|uninstall]
  wireserver.py state
  wireserver.py wait [--incarnation N] [--timeout S]

See README.md next to this file.
"""

import argparse
import base64
import datetime
import http.server
import json
import os
import re
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from xml.sax.saxutils import escape, quoteattr

DEFAULT_NAME = "OpenSource.HpcCompute.InfiniBandDriverLinux"
DEFAULT_VERSION = "1.0.0"
PROTOCOL_VERSION = "2012-11-30"
HGAP_API_VERSION = "2015-09-01"
TERMINAL = ("success", "error", "warning")


def log(msg):
    sys.stderr.write("%s wireserver: %s\n" % (datetime.datetime.utcnow().strftime("%H:%M:%S.%f")[:-3], msg))
    sys.stderr.flush()


def utcnow_iso():
    return datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dotnet_ticks(when=None):
    when = when or datetime.datetime.utcnow()
    delta = when - datetime.datetime(1, 1, 1)
    return (delta.days * 86400 + delta.seconds) * 10 ** 7 + delta.microseconds * 10


def write_atomic(path, data):
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    os.replace(tmp, path)


def openssl(args, stdin=None):
    p = subprocess.run(["openssl"] + args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s" % (" ".join(args[:2]), p.returncode, p.stderr.decode(errors="replace").strip()))
    return p.stdout


def load_settings(value):
    """JSON text, or @FILE holding JSON; None stays None."""
    if value is None:
        return None
    if value.startswith("@"):
        with open(value[1:]) as f:
            value = f.read()
    obj = json.loads(value)
    if not isinstance(obj, dict):
        raise ValueError("settings must be a JSON object")
    return obj


class Tenant:
    """The certificate Azure would deliver for protected settings: made once, kept in the state dir."""

    def __init__(self, state_dir, cipher):
        self.crt = os.path.join(state_dir, "tenant.crt")
        self.prv = os.path.join(state_dir, "tenant.prv")
        self.pfx = os.path.join(state_dir, "tenant.pfx")
        self.cipher = cipher
        if not (os.path.isfile(self.crt) and os.path.isfile(self.prv)):
            openssl(["req", "-x509", "-nodes", "-subj", "/CN=ibdriver-wire-tenant", "-days", "3650",
                     "-newkey", "rsa:2048", "-keyout", self.prv, "-out", self.crt])
        if not os.path.isfile(self.pfx):
            openssl(["pkcs12", "-export", "-in", self.crt, "-inkey", self.prv, "-passout", "pass:", "-out", self.pfx])
        fp = openssl(["x509", "-in", self.crt, "-noout", "-fingerprint", "-sha1"]).decode()
        self.thumbprint = fp.strip().rsplit("=", 1)[1].replace(":", "").upper()
        self._certs_cache = {}

    def encrypt_settings(self, obj):
        der = openssl(["cms", "-encrypt", "-binary", "-outform", "DER", "-" + self.cipher, self.crt],
                      stdin=json.dumps(obj).encode())
        return base64.b64encode(der).decode()

    def certificates_data(self, transport_b64):
        """The PFX (tenant cert + key, empty password) CMS-enveloped to the agent's transport cert."""
        key = transport_b64.strip()
        if key in self._certs_cache:
            return self._certs_cache[key]
        body = re.sub(r"\s+", "", key)
        pem = "-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n" % "\n".join(
            body[i:i + 64] for i in range(0, len(body), 64))
        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
            f.write(pem)
            transport = f.name
        try:
            with open(self.pfx, "rb") as f:
                pfx = f.read()
            der = openssl(["cms", "-encrypt", "-binary", "-outform", "DER", "-des3", transport], stdin=pfx)
        finally:
            os.unlink(transport)
        data = base64.b64encode(der).decode()
        data = "\n".join(data[i:i + 64] for i in range(0, len(data), 64))
        self._certs_cache[key] = data
        return data


class Fabric:
    """All state; every method runs under self.lock."""

    def __init__(self, args):
        self.lock = threading.Condition()
        self.host = args.bind
        self.wire = "http://%s:%d" % (args.bind, args.wire_port)
        self.state_dir = args.state_dir
        self.out_dir = args.out_dir or os.path.join(args.state_dir, "status")
        os.makedirs(self.out_dir, exist_ok=True)
        self.zip_path = os.path.abspath(args.zip)
        self.name, self.version = args.name, args.version
        if self.name is None or self.version is None:
            m = re.match(r"^(.+)-(\d[\d.]*)\.zip$", os.path.basename(self.zip_path))
            self.name = self.name or (m.group(1) if m else DEFAULT_NAME)
            self.version = self.version or (m.group(2) if m else DEFAULT_VERSION)
        self.blob_type = args.blob_type
        self.vm_size = args.vm_size
        self.quiet = args.quiet
        self.tenant = Tenant(args.state_dir, args.cipher)
        self.container_id = str(uuid.uuid4())
        self.deployment = uuid.uuid4().hex
        self.role_instance = "%s.ibwire_IN_0" % self.deployment
        self.incarnation = args.incarnation
        self.seqno = args.seqno
        self.ext_state = "enabled"
        self.public = load_settings(args.public_settings) or {}
        self.protected = load_settings(args.protected_settings)
        self.blobs = {}          # blob path -> bytearray
        self.upload_count = 0
        self.last_summary = None
        self.served = {}         # incarnation -> {"goalstate": t, "extensionsConfig": t, ...}
        self.reached = {}        # incarnation -> summary of the first upload that reported its seqNo terminally
        self.events = open(os.path.join(self.out_dir, "events.jsonl"), "a")
        self._render()

    # ---- documents -------------------------------------------------------------------------
    def _render(self):
        """Build the goal-state documents for the current incarnation (settings encrypted once)."""
        inc = self.incarnation
        self.role_config = "%s.%d.%s.%d._ibwire.%d.xml" % (self.deployment, inc, self.deployment, inc, inc)
        base = "%s/machine/%s/%s" % (self.wire, self.container_id, urllib.parse.quote(self.role_instance))
        handler_settings = {"publicSettings": self.public}
        if self.protected is not None:
            handler_settings["protectedSettingsCertThumbprint"] = self.tenant.thumbprint
            handler_settings["protectedSettings"] = self.tenant.encrypt_settings(self.protected)
        runtime = json.dumps({"runtimeSettings": [{"handlerSettings": handler_settings}]})
        self.manifest_url = "%s/extensions/%s/manifest.xml" % (self.wire, self.name)
        self.zip_url = "%s/extensions/%s/%s__%s.zip" % (self.wire, self.name, self.name, self.version)
        self.status_url = ("%s/statusblob/%s.status?sr=b&sp=rw&se=9999-01-01&sk=key1&sv=2014-02-14&sig=ibwirefake"
                           % (self.wire, self.container_id))
        q = lambda kind: "%s?comp=config&type=%s&incarnation=%d" % (base, kind, inc)
        self.docs = {}
        self.docs["goalstate"] = """<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>%(inc)d</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts><Port>16001</Port></LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>%(cid)s</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>%(ri)s</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>%(he)s</HostingEnvironmentConfig>
          <SharedConfig>%(sc)s</SharedConfig>
          <ExtensionsConfig>%(ec)s</ExtensionsConfig>
          <FullConfig>%(fc)s</FullConfig>
          <Certificates>%(ce)s</Certificates>
          <ConfigName>%(cn)s</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
""" % {"inc": inc, "cid": self.container_id, "ri": escape(self.role_instance),
       "he": escape(q("hostingEnvironmentConfig")), "sc": escape(q("sharedConfig")),
       "ec": escape(q("extensionsConfig")), "fc": escape(q("fullConfig")),
       "ce": escape("%s?comp=certificates&incarnation=%d" % (base, inc)), "cn": escape(self.role_config)}
        self.docs["hostingEnvironmentConfig"] = """<?xml version="1.0" encoding="utf-8"?>
<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="%(inc)d">
  <StoredCertificates />
  <Deployment name="%(dep)s" guid="{%(cid)s}" incarnation="%(inc)d">
    <Service name="ibwire" guid="{00000000-0000-0000-0000-000000000000}" />
    <ServiceInstance name="%(dep)s.0" guid="{%(cid)s}" />
  </Deployment>
  <Incarnation number="%(inc)d" instance="ibwire_IN_0" guid="{%(cid)s}" />
  <Role guid="{%(cid)s}" name="ibwire" hostingEnvironmentVersion="1" software="" softwareType="ApplicationPackage" entryPoint="" parameters="" settleTimeSeconds="10" />
  <HostingEnvironmentSettings name="full" runtime="rd_fabric_stable.ibwire.zip">
    <CAS mode="full" />
    <PrivilegeLevel mode="max" />
    <AdditionalProperties><CgiHandlers></CgiHandlers></AdditionalProperties>
  </HostingEnvironmentSettings>
  <ApplicationSettings />
  <ResourceReferences />
</HostingEnvironmentConfig>
""" % {"inc": inc, "dep": self.deployment, "cid": self.container_id}
        self.docs["sharedConfig"] = """<?xml version="1.0" encoding="utf-8"?>
<SharedConfig version="1.0.0.0" goalStateIncarnation="%(inc)d">
  <Deployment name="%(dep)s" guid="{%(cid)s}" incarnation="%(inc)d">
    <Service name="ibwire" guid="{00000000-0000-0000-0000-000000000000}" />
    <ServiceInstance name="%(dep)s.0" guid="{%(cid)s}" />
  </Deployment>
  <Incarnation number="%(inc)d" instance="ibwire_IN_0" guid="{%(cid)s}" />
  <Role guid="{%(cid)s}" name="ibwire" settleTimeSeconds="10" />
  <LoadBalancerSettings timeoutSeconds="0" waitLoadBalancerProbeCount="8">
    <Probes><Probe name="ibwire" /></Probes>
  </LoadBalancerSettings>
  <OutputEndpoints />
  <Instances>
    <Instance id="ibwire_IN_0" address="127.0.0.1">
      <FaultDomains randomId="0" updateId="0" updateCount="0" />
      <InputEndpoints />
    </Instance>
  </Instances>
</SharedConfig>
""" % {"inc": inc, "dep": self.deployment, "cid": self.container_id}
        self.docs["fullConfig"] = self.docs["hostingEnvironmentConfig"]
        if self.ext_state == "absent":
            plugins, settings = "", ""
        else:
            plugins = ('  <Plugin name=%s version=%s location=%s state=%s autoUpgrade="false" failoverlocation=%s '
                       'runAsStartupTask="false" isJson="true" useExactVersion="true" />\n'
                       % (quoteattr(self.name), quoteattr(self.version), quoteattr(self.manifest_url),
                          quoteattr(self.ext_state), quoteattr(self.manifest_url + "?failover=1")))
            settings = ('  <Plugin name=%s version=%s>\n    <RuntimeSettings seqNo="%d">%s</RuntimeSettings>\n  </Plugin>\n'
                        % (quoteattr(self.name), quoteattr(self.version), self.seqno, escape(runtime)))
        self.docs["extensionsConfig"] = """<?xml version="1.0" encoding="utf-8"?>
<Extensions version="1.0.0.0" goalStateIncarnation="%(inc)d"><GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <GAFamilies>
    <GAFamily>
      <Name>Prod</Name>
      <Uris>
        <Uri>%(gam)s</Uri>
      </Uris>
    </GAFamily>
  </GAFamilies>
</GuestAgentExtension>
<Plugins>
%(plugins)s</Plugins>
<PluginSettings>
%(settings)s</PluginSettings>
<StatusUploadBlob statusBlobType="%(bt)s">%(su)s</StatusUploadBlob>
<InVMGoalStateMetaData inSvdSeqNo="%(inc)d" createdOnTicks="%(ticks)d" activityId="%(act)s" correlationId="%(cor)s" />
</Extensions>
""" % {"inc": inc, "gam": escape(self.wire + "/ga/manifest.xml"), "plugins": plugins, "settings": settings,
       "bt": self.blob_type, "su": escape(self.status_url), "ticks": dotnet_ticks(), "act": uuid.uuid4(),
       "cor": uuid.uuid4()}
        self.docs["manifest"] = """<?xml version="1.0" encoding="utf-8"?>
<PluginVersionManifest xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <Plugins>
    <Plugin>
      <Version>%s</Version>
      <Uris>
        <Uri>%s</Uri>
      </Uris>
    </Plugin>
  </Plugins>
  <InternalPlugins />
</PluginVersionManifest>
""" % (escape(self.version), escape(self.zip_url))
        self.docs["gamanifest"] = """<?xml version="1.0" encoding="utf-8"?>
<PluginVersionManifest xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <Plugins />
</PluginVersionManifest>
"""
        self.served.setdefault(inc, {})["set"] = time.time()
        self.event("goalstate-set", incarnation=inc, seqNo=self.seqno, state=self.ext_state,
                   protected=self.protected is not None)

    def event(self, kind, **fields):
        rec = dict(time=time.time(), event=kind, **fields)
        self.events.write(json.dumps(rec) + "\n")
        self.events.flush()

    def mark_served(self, what):
        inc = self.incarnation
        s = self.served.setdefault(inc, {})
        if what not in s:
            s[what] = time.time()
            self.event("served", what=what, incarnation=inc)

    def bump(self, req):
        if "publicSettings" in req:
            self.public = req["publicSettings"] or {}
        if "protectedSettings" in req:
            self.protected = req["protectedSettings"]
        if req.get("seqNo") is not None:
            self.seqno = int(req["seqNo"])
        elif not req.get("keepSeqNo"):
            self.seqno += 1
        if req.get("state"):
            if req["state"] not in ("enabled", "disabled", "uninstall", "absent"):
                raise ValueError("state must be enabled, disabled, uninstall or absent")
            self.ext_state = req["state"]
        self.incarnation += 1
        self._render()
        self.lock.notify_all()
        return self.state()

    def state(self):
        served = self.served.get(self.incarnation, {})
        return {"incarnation": self.incarnation, "seqNo": self.seqno, "state": self.ext_state,
                "handler": self.name, "version": self.version, "thumbprint": self.tenant.thumbprint,
                "uploads": self.upload_count, "outDir": self.out_dir, "served": served,
                "reached": self.reached.get(self.incarnation), "lastUpload": self.last_summary}

    # ---- status blobs ----------------------------------------------------------------------
    def blob_put(self, url, headers, body, channel):
        """Apply one blob PUT (Azure storage semantics we need); decode when it carries data."""
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        key = parts.path
        h = {k.lower(): v for k, v in headers.items()}
        if "page" in query.get("comp", []):
            m = re.match(r"bytes=(\d+)-(\d+)", h.get("x-ms-range", ""))
            if not m or key not in self.blobs:
                return 400
            start, end = int(m.group(1)), int(m.group(2)) + 1
            blob = self.blobs[key]
            if end > len(blob):
                blob.extend(b"\0" * (end - len(blob)))
            blob[start:end] = body[:end - start].ljust(end - start, b"\0")
            self._decode(key, "PageBlob", channel)
            return 201
        btype = h.get("x-ms-blob-type", "BlockBlob")
        if btype == "PageBlob":
            self.blobs[key] = bytearray(int(h.get("x-ms-blob-content-length", "0")))
            return 201
        self.blobs[key] = bytearray(body)
        self._decode(key, "BlockBlob", channel)
        return 201

    def _decode(self, key, btype, channel):
        raw = bytes(self.blobs[key]).rstrip(b"\0").rstrip()
        try:
            doc = json.loads(raw.decode("utf-8"))
        except ValueError:
            return  # a page blob half written; the next page completes it
        self.upload_count += 1
        n = self.upload_count
        pretty = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        write_atomic(os.path.join(self.out_dir, "status-%06d.json" % n), pretty)
        write_atomic(os.path.join(self.out_dir, "status-latest.json"), pretty)
        summary = {"n": n, "time": time.time(), "channel": channel, "blobType": btype,
                   "incarnationServed": self.incarnation, "handlers": []}
        for hs in doc.get("aggregateStatus", {}).get("handlerAggregateStatus", []) or []:
            rss = hs.get("runtimeSettingsStatus") or {}
            st = (rss.get("settingsStatus") or {}).get("status") or {}
            summary["handlers"].append({
                "name": hs.get("handlerName"), "version": hs.get("handlerVersion"),
                "status": hs.get("status"), "code": hs.get("code"),
                "sequenceNumber": rss.get("sequenceNumber"), "extStatus": st.get("status"),
                "extCode": st.get("code"), "operation": st.get("operation"),
                "substatus": [(s.get("name"), s.get("status"), s.get("code")) for s in st.get("substatus") or []]})
        self.last_summary = summary
        for hs in summary["handlers"]:
            if (hs["name"] == self.name and hs["sequenceNumber"] == self.seqno and hs["extStatus"] in TERMINAL
                    and self.incarnation not in self.reached):
                served = self.served.get(self.incarnation, {})
                since = lambda k: round(summary["time"] - served[k], 3) if k in served else None
                r = dict(summary, handler=hs, secondsFromSet=since("set"),
                         secondsFromGoalState=since("goalstate"), secondsFromExtensionsConfig=since("extensionsConfig"))
                self.reached[self.incarnation] = r
                self.event("reached", incarnation=self.incarnation, seqNo=self.seqno, upload=n,
                           secondsFromSet=r["secondsFromSet"], secondsFromGoalState=r["secondsFromGoalState"],
                           secondsFromExtensionsConfig=r["secondsFromExtensionsConfig"],
                           status=hs["status"], extStatus=hs["extStatus"], extCode=hs["extCode"])
        self.event("upload", n=n, channel=channel, blobType=btype, handlers=summary["handlers"])
        self.lock.notify_all()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "ibwire/1"
    fabric = None  # set on the class per server
    role = "wire"

    # The agent's per-period requests (goal state, status, health) are not logged: under TCG
    # the journal's share of them was a measurable part of a guest's CPU.
    QUIET = ("GET /machine/?comp=goalstate ", "PUT /status ", "GET /health ", "POST /HealthService ")

    def log_message(self, fmt, *args):
        line = fmt % args
        if self.fabric.quiet and len(args) > 1 and str(args[1]).startswith("2") and any(q in line for q in self.QUIET):
            return
        log("%s %s" % (self.role, line))

    def _send(self, code, body=b"", ctype="text/xml; charset=utf-8", headers=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _zip(self):
        with open(self.fabric.zip_path, "rb") as f:
            return f.read()

    # --- the WireServer (port 80) ---
    def _wire_get(self, path, query):
        f = self.fabric
        comp = query.get("comp", [None])[0]
        if path == "/" and comp == "versions":
            return 200, """<?xml version="1.0" encoding="utf-8"?>
<Versions>
  <Preferred>
    <Version>2012-11-30</Version>
  </Preferred>
  <Supported>
    <Version>2012-11-30</Version>
    <Version>2010-12-15</Version>
    <Version>2010-28-10</Version>
  </Supported>
</Versions>
""", "text/xml; charset=utf-8"
        if path.rstrip("/") == "/machine" and comp == "goalstate":
            f.mark_served("goalstate")
            return 200, f.docs["goalstate"], "text/xml; charset=utf-8"
        if path.startswith("/machine/"):
            if comp == "config":
                kind = query.get("type", [""])[0]
                if kind in ("hostingEnvironmentConfig", "sharedConfig", "extensionsConfig", "fullConfig"):
                    f.mark_served(kind)
                    return 200, f.docs[kind], "text/xml; charset=utf-8"
            if comp == "certificates":
                cert = self.headers.get("x-ms-guest-agent-public-x509-cert")
                if not cert:
                    return 400, "missing x-ms-guest-agent-public-x509-cert", "text/plain"
                data = f.tenant.certificates_data(cert)
                f.mark_served("certificates")
                return 200, """<?xml version="1.0" encoding="utf-8"?>
<CertificateFile xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="certificates10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>%d</Incarnation>
  <Format>Pkcs7BlobWithPfxContents</Format>
  <Data>%s</Data>
</CertificateFile>
""" % (f.incarnation, data), "text/xml; charset=utf-8"
        if path == "/extensions/%s/manifest.xml" % f.name:
            f.mark_served("manifest")
            return 200, f.docs["manifest"], "text/xml; charset=utf-8"
        if path == "/extensions/%s/%s__%s.zip" % (f.name, f.name, f.version):
            f.mark_served("zip")
            return 200, self._zip(), "application/octet-stream"
        if path == "/ga/manifest.xml":
            return 200, f.docs["gamanifest"], "text/xml; charset=utf-8"
        if path.startswith("/statusblob/"):
            blob = f.blobs.get(path)
            return (200, bytes(blob), "application/octet-stream") if blob is not None else (404, "", "text/plain")
        if path in ("/metadata/instance", "/metadata/instance/compute"):
            # The agent asks 169.254.169.254 first and, when it cannot connect, the WireServer.
            compute = {"location": "ibwire", "name": "ibwire-vm", "offer": "debian-12", "osType": "Linux",
                       "placementGroupId": "", "platformFaultDomain": "0", "platformUpdateDomain": "0",
                       "publisher": "Debian", "resourceGroupName": "ibwire", "sku": "12", "subscriptionId":
                       "00000000-0000-0000-0000-000000000000", "tags": "", "version": "0.0.0",
                       "vmId": f.container_id, "vmSize": f.vm_size, "vmScaleSetName": "", "zone": ""}
            if path.endswith("/compute"):
                return 200, json.dumps(compute), "application/json"
            return 200, json.dumps({"compute": compute, "network": {"interface": [{
                "macAddress": "000000000000", "ipv4": {"ipAddress": [{"privateIpAddress": "127.0.0.1",
                                                                      "publicIpAddress": ""}], "subnet": []},
                "ipv6": {"ipAddress": []}}]}}), "application/json"
        if path == "/control/state":
            return 200, json.dumps(f.state(), indent=2), "application/json"
        return None

    def _control_wait(self, query):
        f = self.fabric
        timeout = min(float(query.get("timeout", ["300"])[0]), 600.0)
        want = query.get("incarnation", [None])[0]
        deadline = time.time() + timeout
        while True:
            inc = int(want) if want else f.incarnation
            if inc in f.reached:
                return 200, json.dumps(f.reached[inc], indent=2), "application/json"
            left = deadline - time.time()
            if left <= 0:
                return 504, json.dumps({"error": "timeout", "state": f.state()}, indent=2), "application/json"
            f.lock.wait(min(left, 5.0))

    def _dispatch(self):
        f = self.fabric
        parts = urllib.parse.urlsplit(self.path)
        path, query = parts.path, urllib.parse.parse_qs(parts.query)
        body = self._body() if self.command in ("PUT", "POST") else b""
        with f.lock:
            try:
                if self.role == "wire":
                    res = self._wire(path, query, body)
                else:
                    res = self._hgap(path, query, body)
            except Exception as e:  # never let a bug look like a fabric answer the agent trusts
                log("error serving %s %s: %r" % (self.command, self.path, e))
                res = (500, "internal error: %s" % e, "text/plain")
        if res is None:
            res = (404, "", "text/plain")
        code, payload, ctype = res[0], res[1], res[2]
        self._send(code, payload, ctype, res[3] if len(res) > 3 else None)

    def _wire(self, path, query, body):
        f = self.fabric
        if self.command in ("GET", "HEAD"):
            if path == "/control/wait":
                return self._control_wait(query)
            return self._wire_get(path, query)
        if self.command == "PUT" and path.startswith("/statusblob/"):
            code = f.blob_put(self.path, dict(self.headers.items()), body, "direct")
            return code, "", "text/plain"
        if self.command == "POST" and path == "/control/goalstate":
            req = json.loads(body.decode() or "{}")
            return 200, json.dumps(f.bump(req), indent=2), "application/json"
        if self.command == "POST":
            # health reports, role properties, telemetry events, HealthService: accepted and dropped
            return 200, "", "text/plain"
        return None

    # --- the HostGAPlugin (port 32526) ---
    def _hgap(self, path, query, body):
        f = self.fabric
        if self.command in ("GET", "HEAD"):
            if path == "/versions":
                return 200, json.dumps([HGAP_API_VERSION, PROTOCOL_VERSION]), "application/json"
            if path == "/health":
                return 200, "", "text/plain"
            if path == "/vmSettings":
                return 404, "", "text/plain"  # no Fast Track: the agent uses ExtensionsConfig
            if path == "/extensionArtifact":
                loc = self.headers.get("x-ms-artifact-location", "")
                lp = urllib.parse.urlsplit(loc)
                if loc.startswith(f.wire + "/"):
                    return self._wire_get(lp.path, urllib.parse.parse_qs(lp.query))
                return 404, "", "text/plain"
            return None
        if self.command == "PUT" and path == "/status":
            env = json.loads(body.decode("utf-8"))
            headers = {h["headerName"]: h["headerValue"] for h in env.get("headers", [])}
            content = base64.b64decode(env["content"]) if env.get("content") is not None else b""
            code = f.blob_put(env["requestUri"], headers, content, "hostplugin")
            return (200 if code == 201 else code), "", "text/plain"
        if self.command in ("PUT", "POST"):
            return 200, "", "text/plain"  # /vmAgentLog and anything else: accepted
        return None

    do_GET = do_HEAD = do_PUT = do_POST = _dispatch


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(args):
    os.makedirs(args.state_dir, exist_ok=True)
    fabric = Fabric(args)
    servers = []
    listeners = [("wire", args.bind, args.wire_port), ("hgap", args.bind, args.hgap_port)]
    if args.imds_bind:
        listeners.append(("wire", args.imds_bind, 80))
    for role, addr, port in listeners:
        cls = type("Handler_" + role, (Handler,), {"fabric": fabric, "role": role})
        srv = Server((addr, port), cls)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    log("serving %s %s (incarnation %d, seqNo %d) on %s; status to %s"
        % (fabric.name, fabric.version, fabric.incarnation, fabric.seqno,
           " and ".join("%s:%d" % (a, p) for _, a, p in listeners), fabric.out_dir))
    if args.ready_file:
        write_atomic(args.ready_file, json.dumps(fabric.state()))
    stop = threading.Event()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    for s in servers:
        s.shutdown()
    log("stopped")


def control(args, method, path, payload=None, timeout=30):
    url = "http://%s:%d%s" % (args.bind, args.wire_port, path)
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            sys.stdout.write(r.read().decode() + "\n")
            return 0
    except urllib.error.HTTPError as e:
        sys.stdout.write(e.read().decode() + "\n")
        return 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--wire-port", type=int, default=80)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the fabric")
    s.add_argument("--hgap-port", type=int, default=32526)
    s.add_argument("--zip", required=True, help="the extension's release zip")
    s.add_argument("--name", help="handler name (default: from the zip's file name)")
    s.add_argument("--version", help="handler version (default: from the zip's file name)")
    s.add_argument("--state-dir", required=True, help="tenant certificate and status output live here")
    s.add_argument("--out-dir", help="where decoded status blobs go (default STATE_DIR/status)")
    s.add_argument("--public-settings", help="JSON object or @FILE")
    s.add_argument("--protected-settings", help="JSON object or @FILE (omit: no protected settings)")
    s.add_argument("--incarnation", type=int, default=1)
    s.add_argument("--seqno", type=int, default=0)
    s.add_argument("--blob-type", choices=("BlockBlob", "PageBlob"), default="BlockBlob")
    s.add_argument("--vm-size", default="Standard_HB120rs_v3", help="vmSize in the IMDS answers (the agent's telemetry; the handler's messages)")
    s.add_argument("--cipher", choices=("des3", "aes256"), default="aes256", help="protected settings cipher")
    s.add_argument("--ready-file", help="written once every port listens")
    s.add_argument("--imds-bind", help="also answer IMDS on ADDR:80 (an address the caller put on a local interface)")
    s.add_argument("--quiet", action="store_true", help="do not log the agent's successful per-period requests")
    b = sub.add_parser("bump", help="new incarnation (new settings, new seqNo unless --keep-seqno)")
    b.add_argument("--public-settings")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--protected-settings")
    g.add_argument("--no-protected", action="store_true")
    g2 = b.add_mutually_exclusive_group()
    g2.add_argument("--seqno", type=int)
    g2.add_argument("--keep-seqno", action="store_true")
    b.add_argument("--state", choices=("enabled", "disabled", "uninstall", "absent"))
    sub.add_parser("state", help="print the current state as JSON")
    w = sub.add_parser("wait", help="wait until the agent uploads a terminal status for the goal state's seqNo")
    w.add_argument("--incarnation", type=int)
    w.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()
    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "bump":
        req = {}
        if args.public_settings is not None:
            req["publicSettings"] = load_settings(args.public_settings)
        if args.no_protected:
            req["protectedSettings"] = None
        elif args.protected_settings is not None:
            req["protectedSettings"] = load_settings(args.protected_settings)
        if args.seqno is not None:
            req["seqNo"] = args.seqno
        req["keepSeqNo"] = args.keep_seqno
        if args.state:
            req["state"] = args.state
        return control(args, "POST", "/control/goalstate", req)
    if args.cmd == "state":
        return control(args, "GET", "/control/state")
    if args.cmd == "wait":
        q = "timeout=%g" % min(args.timeout, 600) + ("&incarnation=%d" % args.incarnation if args.incarnation else "")
        return control(args, "GET", "/control/wait?" + q, timeout=min(args.timeout, 600) + 10)


if __name__ == "__main__":
    sys.exit(main() or 0)
