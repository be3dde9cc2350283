#!/usr/bin/env bash
# Benchmark: the no-op enable (sequence number already applied, host still verifies) as a whole
# process, against `python3 -c pass`, the floor a Python handler pays at start-up.
# Reports median wall time (hyperfine) and peak RSS (GNU time), for the release binary.
# Usage: packaging/bench.sh [RUNS]   (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
log() { printf 'bench.sh: %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need hyperfine hyperfine
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

bin=target/x86_64-unknown-linux-gnu/release/ibdriver
[ -x "$bin" ] || packaging/build.sh >/dev/null
bin=$(realpath "$bin")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
name=OpenSource.HpcCompute.InfiniBandDriverLinux
hd="$work/lib/$name-1.0.0"
mkdir -p "$hd/config" "$hd/status" "$work/log/events"
cp -r tests/fixtures/hosts/hbv3 "$work/root"
cat > "$hd/HandlerEnvironment.json" <<JSON
[{"name":"$name","version":1.0,"handlerEnvironment":{"logFolder":"$work/log","configFolder":"$hd/config",
"statusFolder":"$hd/status","heartbeatFile":"$hd/heartbeat.log","eventsFolder":"$work/log/events"}}]
JSON
echo '{"runtimeSettings":[{"handlerSettings":{"publicSettings":{},"protectedSettings":null,"protectedSettingsCertThumbprint":null}}]}' > "$hd/config/1.settings"
mkdir -p "$work/stubs"
printf '#!/bin/sh\necho "[]"\n' > "$work/stubs/ip"; chmod +x "$work/stubs/ip"
# A loopback IMDS that answers at once, for the first (working) enable's timing.
python3 - "$work/imds.port" <<'PY' &
import http.server, sys
body = b'{"vmSize":"Standard_HB120rs_v3","securityProfile":{"secureBootEnabled":"false"}}'
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.headers.get("Metadata") == "true" else 400)
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.timeout = 1
for _ in range(120): s.handle_request()
PY
imds_pid=$!
trap 'kill $imds_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 50); do [ -s "$work/imds.port" ] && break; sleep 0.1; done
export IBDRIVER_ROOT="$work/root" IBDRIVER_IMDS_URL="http://127.0.0.1:$(cat "$work/imds.port")" ConfigSequenceNumber=1 PATH="$work/stubs:$PATH"
cd "$hd"
t0=$(date +%s%N); "$bin" enable; t1=$(date +%s%N)
first_ms=$(( (t1 - t0) / 1000000 ))
for _ in $(seq 1 100); do
  grep -q '"operation":"Enable","status":"success"' status/1.status 2>/dev/null && break
  sleep 0.1
done
grep -q '"operation":"Enable","status":"success"' status/1.status || { log "setup enable did not succeed"; cat status/1.status; exit 1; }
# The worker writes mrseq after the status; wait for it so every measured run is the no-op.
for _ in $(seq 1 100); do [ "$(cat mrseq 2>/dev/null)" = 1 ] && break; sleep 0.1; done
sleep 0.5
before=$(stat -c %y status/1.status)
# The interpreter itself, not a version-manager shim in front of it.
py=$(python3 -c 'import sys; print(sys.executable)')

hyperfine -N --warmup 20 --runs "$runs" --export-json "$work/h.json" \
  -n "ibdriver enable (no-op)" "$bin enable" -n "python3 -c pass" "$py -c pass" >&2
[ "$(stat -c %y status/1.status)" = "$before" ] || { log "no-op enable rewrote the status"; exit 1; }

# The same no-op when configure recorded an IPoIB address: the check asks `ip` once.
data="$IBDRIVER_ROOT/var/lib/infiniband-driver-linux"
cp "$data/configure.json" "$work/configure.json.orig"
python3 - "$data/configure.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["ipoib"] = "native"
s["assignments"] = [{"netdev": "ib0", "mac": "00155d33ff2c", "address": "172.16.1.4/16"}]
json.dump(s, open(sys.argv[1], "w"))
PY
printf '#!/bin/sh\necho %s\n' "'[{\"ifname\":\"ib0\",\"addr_info\":[{\"family\":\"inet\",\"local\":\"172.16.1.4\",\"prefixlen\":16}]}]'" > "$work/stubs/ip"
hyperfine -N --warmup 20 --runs "$runs" --export-json "$work/h2.json" \
  -n "ibdriver enable (no-op, IPoIB checked)" "$bin enable" >&2
[ "$(stat -c %y status/1.status)" = "$before" ] || { log "no-op enable (IPoIB) rewrote the status"; exit 1; }
cp "$work/configure.json.orig" "$data/configure.json"
printf '#!/bin/sh\necho "[]"\n' > "$work/stubs/ip"

# apply on the verified host (repair, configure and verify re-run; nothing installed) and a
# diagnose bundle of it.
echo '{"ipoib":"off"}' > "$work/apply.json"
t0=$(date +%s%N); "$bin" apply --settings "$work/apply.json" >/dev/null 2>&1; t1=$(date +%s%N)
apply_ms=$(( (t1 - t0) / 1000000 ))
t0=$(date +%s%N); "$bin" diagnose --out "$work/bundle.tar.gz" >/dev/null 2>&1; t1=$(date +%s%N)
diag_ms=$(( (t1 - t0) / 1000000 )); diag_bytes=$(stat -c %s "$work/bundle.tar.gz")

peak() { local m=0 k; for _ in $(seq 1 20); do k=$(/usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n1); [ "$k" -gt "$m" ] && m=$k; done; echo "$m"; }
rss_handler=$(peak "$bin" enable)
rss_python=$(peak "$py" -c pass)

echo "first enable (preflight with IMDS, worker started): ${first_ms} ms"
echo "apply on a verified host (no install): ${apply_ms} ms"
echo "diagnose: ${diag_ms} ms, bundle ${diag_bytes} bytes"
python3 - "$work/h.json" "$rss_handler" "$rss_python" "$work/h2.json" <<'PY'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
res.update({r["command"]: r for r in json.load(open(sys.argv[4]))["results"]})
i = res["ibdriver enable (no-op, IPoIB checked)"]
print(f"no-op enable with an IPoIB address to check: median {i['median']*1000:.2f} ms")
h, p = res["ibdriver enable (no-op)"], res["python3 -c pass"]
mh, mp = h["median"] * 1000, p["median"] * 1000
print(f"no-op enable: median {mh:.2f} ms (mean {h['mean']*1000:.2f}, min {h['min']*1000:.2f}), peak RSS {sys.argv[2]} KiB")
print(f"python3 -c pass: median {mp:.2f} ms, peak RSS {sys.argv[3]} KiB")
print(f"ratio: {mh/mp:.3f} of python3 -c pass")
ok = mh < 5 and mh < mp / 4
print("targets (median < 5 ms and < 1/4 of python3 -c pass):", "met" if ok else "NOT met")
sys.exit(0 if ok else 1)
PY
