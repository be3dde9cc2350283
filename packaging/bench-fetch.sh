#!/usr/bin/env bash
# Benchmark of the fetch pipeline over loopback, on a synthetic artifact shaped like an OFED
# tarball (about 150 MB of gzip holding 256 MiB in a few thousand files, 40% incompressible),
# against Microsoft's documented recipe (wget, then sha256sum, then tar zxf) and against
# `tar xzf` of the local file alone. Runs alternate pair by pair and extract onto tmpfs
# (/dev/shm). Reports medians and peak memory.
# Usage: packaging/bench-fetch.sh [ROUNDS]   (default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
log() { printf 'bench-fetch.sh: %s\n' "$*" >&2; }
for tool in wget sha256sum tar; do
  command -v "$tool" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

bin=target/x86_64-unknown-linux-gnu/release/ibdriver
[ -x "$bin" ] || packaging/build.sh >/dev/null
bin=$(realpath "$bin")

cache=target/bench
mkdir -p "$cache"
art="$cache/MLNX_OFED_LINUX-bench.tgz"
if [ ! -f "$art" ]; then
  log "generating the synthetic artifact (once)"
  python3 - "$art" <<'PY'
import io, os, random, sys, tarfile
rng = random.Random(42)
# A small vocabulary, like the text, scripts and metadata inside RPMs: about 4:1 under gzip.
words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))).encode()
         for _ in range(600)]
text = b" ".join(rng.choice(words) for _ in range(400_000))  # ~2.6 MB of word salad
total, files = 256 * 1024 * 1024, 3000
size = total // files
with tarfile.open(sys.argv[1] + ".tmp", "w:gz", compresslevel=6) as tar:
    for i in range(files):
        n_rand = int(size * 0.4)
        off = rng.randrange(0, len(text) - size)
        data = os.urandom(n_rand) + text[off:off + size - n_rand]
        ti = tarfile.TarInfo(f"MLNX_OFED_LINUX-bench/RPMS/pkg-{i:04d}.rpm")
        ti.size, ti.mode = len(data), 0o644
        tar.addfile(ti, io.BytesIO(data))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
PY
fi
sha=$(sha256sum "$art" | cut -d' ' -f1)
bytes=$(stat -c %s "$art")
log "artifact: $bytes bytes, sha256 $sha"

# A loopback server that sends with sendfile(2), so the server is not what is measured.
port_file=$(mktemp)
python3 - "$cache" "$port_file" <<'PY' &
import http.server, os, sys
root = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = os.path.join(root, os.path.basename(self.path.split("?")[0]))
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404); return
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            self.connection.sendfile(f)
        self.close_connection = True
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[2], "w").write(str(s.server_address[1]))
s.timeout = 600
s.serve_forever()
PY
server=$!
work=$(mktemp -d /dev/shm/ibdriver-bench.XXXXXX)
trap 'kill $server 2>/dev/null; rm -rf "$work" "$port_file"' EXIT
for _ in $(seq 1 50); do [ -s "$port_file" ] && break; sleep 0.1; done
url="http://127.0.0.1:$(cat "$port_file")/$(basename "$art")"
cp "$art" "$work/local.tgz"

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
declare -a t_recipe t_local t_ours
for r in $(seq 1 "$rounds"); do
  rm -rf "$work/x"; mkdir -p "$work/x"; sync
  a=$(now); wget -q -O "$work/dl.tgz" "$url" && echo "$sha  $work/dl.tgz" | sha256sum -c --quiet && tar zxf "$work/dl.tgz" -C "$work/x"; b=$(now)
  t_recipe+=("$(ms "$a" "$b")"); rm -rf "$work/x" "$work/dl.tgz"; mkdir -p "$work/x"; sync

  a=$(now); tar xzf "$work/local.tgz" -C "$work/x"; b=$(now)
  t_local+=("$(ms "$a" "$b")"); rm -rf "$work/x"; sync

  a=$(now); "$bin" fetch "$url" --sha256 "$sha" --into "$work/x" 2>/dev/null; b=$(now)
  t_ours+=("$(ms "$a" "$b")"); rm -rf "$work/x"; sync
  log "round $r: recipe ${t_recipe[-1]} ms, local tar ${t_local[-1]} ms, ibdriver fetch ${t_ours[-1]} ms"
done
rss=$(/usr/bin/time -f %M "$bin" fetch "$url" --sha256 "$sha" --into "$work/x" 2>&1 >/dev/null | tail -n1)
rm -rf "$work/x"

python3 - "$rss" "${t_recipe[*]}" "${t_local[*]}" "${t_ours[*]}" <<'PY'
import statistics, sys
rss = int(sys.argv[1])
recipe, local, ours = ([int(x) for x in a.split()] for a in sys.argv[2:5])
m = {k: statistics.median(v) for k, v in (("recipe", recipe), ("local", local), ("ours", ours))}
print(f"median: recipe (wget+sha256sum+tar) {m['recipe']:.0f} ms, local tar xzf {m['local']:.0f} ms, ibdriver fetch {m['ours']:.0f} ms")
print(f"ibdriver fetch = {m['ours']/m['local']:.2f}x local tar xzf; recipe is {m['recipe']/m['ours']:.2f}x slower than ibdriver fetch")
print(f"ibdriver fetch peak RSS: {rss} KiB ({rss/1024:.1f} MiB)")
ok = m["ours"] <= 0.6 * m["local"] and m["recipe"] >= 2.5 * m["ours"] and rss < 32 * 1024
print("targets (<= 0.6x local tar, >= 2.5x faster than the recipe, < 32 MiB):", "met" if ok else "NOT met")
sys.exit(0 if ok else 1)
PY
