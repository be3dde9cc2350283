#!/usr/bin/env bash
# The VM tier: boots the Debian 12 guest image (image.sh) under QEMU once per scenario and runs
# the scenario inside it with real systemd, apt, modprobe, ip and reboots. Only the hardware is
# recorded (the hbv3 tree, read through IBDRIVER_SYSFS). The guest's only NIC is on a QEMU hub
# with no other port; inside, the WireServer's address has a prohibit route before anything
# starts and IMDS's address is on loopback.
# Usage: packaging/vm/run.sh [SCENARIO ...]   (root; no argument: the default list, ALL below)
#   IBDRIVER_VM_ACCEL=kvm   use KVM instead of TCG (where nested KVM works)
#   IBDRIVER_VM_BOOT_TIMEOUT=SECONDS   bound on one boot of a guest (default 2400)
#   IBDRIVER_VM_KEEP=1   keep each scenario's disk (target/vm/<scenario>/disk.qcow2) to look into
#   IBDRIVER_VM_BIN=FILE   test this handler binary (also put into the release zip the agent
#                          gets) instead of the release build
# Prints `PASS|FAIL <scenario>/<check> ...` lines and ends with `vm: N passed, N failed`.
# Each scenario leaves target/vm/<scenario>/{console.log,results.txt,timings.txt,share/}.
set -uo pipefail
cd "$(dirname "$0")/../.."
log() { printf 'vm: %s\n' "$*" >&2; }
# The default list, longest chain first so two at a time pack well: doca-install, then the
# scenarios that start from its disk as soon as it ends (kernel-update is the longest).
ALL="doca-install doca-kill kernel-update doca-uninstall inbox-reboot agent-restart agent-service doca-dkms-fail cloud-init health-timer"
scenarios=${*:-$ALL}
boot_timeout=${IBDRIVER_VM_BOOT_TIMEOUT:-2400}
MAX_BOOTS=4

give_up() { echo "FAIL vm/setup $*"; echo "vm: 0 passed, 1 failed"; exit 1; }
# A scenario with a `# vm-from: BASE` line starts from the disk BASE's run ended with (and the
# kernel and initrd it would boot next): BASE runs first, in the same run.
base_of() { sed -n 's/^# vm-from: *\([a-z0-9-]*\).*/\1/p' "packaging/vm/scenarios/$1.sh" | head -n1; }
for s in $scenarios; do
  [ -f "packaging/vm/scenarios/$s.sh" ] || give_up "no scenario named $s (scenarios: $ALL)"
  b=$(base_of "$s")
  [ -z "$b" ] || [ -f "packaging/vm/scenarios/$b.sh" ] || give_up "$s starts from $b, which is no scenario"
  [ -z "$b" ] || [ -z "$(base_of "$b")" ] || give_up "$s starts from $b, which starts from another"
  [ -z "$b" ] || case " $scenarios " in *" $b "*) ;; *) scenarios="$b $scenarios" ;; esac
done
# The bases whose disks later scenarios start from.
bases=" $(for s in $scenarios; do base_of "$s"; done | sort -u | tr '\n' ' ')"
# A qemu-utils from bookworm-backports (10.x) breaks bookworm's qemu-system-x86 (7.2): then both
# come from bookworm.
command -v qemu-system-x86_64 >/dev/null 2>&1 ||
  { apt-get update -qq && { apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null 2>&1 ||
      apt-get install -y -qq --no-install-recommends --allow-downgrades qemu-system-x86 qemu-utils/bookworm >/dev/null; }; } ||
  give_up "qemu-system-x86_64 is not installed and could not be installed"
command -v mkfs.vfat >/dev/null 2>&1 && command -v mcopy >/dev/null 2>&1 ||
  apt-get install -y -qq --no-install-recommends dosfstools mtools >/dev/null ||
  give_up "dosfstools and mtools (for the cloud-init seed disk) could not be installed"
command -v qemu-img >/dev/null 2>&1 || apt-get install -y -qq qemu-utils >/dev/null || give_up "no qemu-img"
if [ "${IBDRIVER_VM_ACCEL:-tcg}" = kvm ]; then accel=(-accel kvm -cpu host); else accel=(-accel tcg,thread=multi -cpu max); fi
qemu-system-x86_64 "${accel[@]}" -machine q35 -display none -S -monitor none -serial none \
  -nodefaults -no-user-config -daemonize -pidfile /tmp/ibtest-qemu-probe.pid >/dev/null 2>&1 \
  && kill "$(cat /tmp/ibtest-qemu-probe.pid)" 2>/dev/null \
  || give_up "qemu-system-x86_64 cannot start a ${IBDRIVER_VM_ACCEL:-tcg} machine here"

bin=${IBDRIVER_VM_BIN:-target/x86_64-unknown-linux-gnu/release/ibdriver}
zip=$(ls dist/*.zip 2>/dev/null | head -n1)
if [ -z "${IBDRIVER_VM_BIN:-}" ] && { [ ! -x "$bin" ] || [ -z "$zip" ]; }; then
  packaging/build.sh >/dev/null || give_up "packaging/build.sh failed"
  zip=$(ls dist/*.zip | head -n1)
fi
[ -x "$bin" ] && [ -f "$zip" ] || give_up "no handler binary $bin or release zip in dist/"
t_img=$(date +%s)
image=$(packaging/vm/image.sh) || give_up "the guest image could not be built (packaging/vm/image.sh)"
log "image $image ready in $(( $(date +%s) - t_img )) s"

# One boot of a scenario's guest; its serial console is appended to console.log.
boot() {
  local dir=$1 cmdline=$2 kernel=$image/vmlinuz initrd=$image/initrd.img; shift 2
  # What the guest's /boot would have a boot loader start (ibtest-export-boot), once it said.
  if [ -f "$dir/share/boot/stamp" ]; then kernel=$dir/share/boot/vmlinuz initrd=$dir/share/boot/initrd.img; fi
  timeout --foreground -k 10 "$boot_timeout" qemu-system-x86_64 "${accel[@]}" -m 2048 -smp 2 \
    -nographic -no-reboot -nodefaults -no-user-config -serial stdio -monitor none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 ibtest $cmdline" \
    -drive "file=$dir/disk.qcow2,if=virtio,format=qcow2" "$@" \
    -virtfs "local,path=$dir/share,mount_tag=share,security_model=none" \
    -netdev hubport,id=n0,hubid=0 -device virtio-net-pci,netdev=n0 \
    </dev/null >>"$dir/console.log" 2>&1
}

# A NoCloud seed disk (label CIDATA) whose user-data comes from the scenario's directory.
seed_disk() {
  local dir=$1 src=packaging/vm/scenarios/cloud-init
  rm -f "$dir/seed.img"
  mkfs.vfat -n CIDATA -C "$dir/seed.img" 32768 >/dev/null &&
    mcopy -i "$dir/seed.img" "$src/user-data" "$src/meta-data" "$bin" ::
}

run_scenario() {
  local s=$1 dir=target/vm/$1 t0 extra=() cmdline="cloud-init=disabled" n base
  t0=$(date +%s) base=$(base_of "$1")
  rm -rf "$dir"; mkdir -p "$dir/share/bin" "$dir/share/dist"
  cp -r packaging/vm/guest "$dir/share/guest"
  cp -r packaging/vm/scenarios "$dir/share/guest/scenarios"
  install -m 0755 "$bin" "$dir/share/bin/ibdriver"
  cp HandlerManifest.json manifest/manifest.xml "$dir/share/dist/"
  # The zip the agent downloads carries the binary under test.
  python3 - "$zip" "$bin" "$dir/share/dist/$(basename "$zip")" <<'PY'
import sys, zipfile
src, binary, out = sys.argv[1:]
with zipfile.ZipFile(src) as z, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as o:
    for info in z.infolist():
        o.writestr(info, open(binary, "rb").read() if info.filename == "bin/ibdriver" else z.read(info))
PY
  echo "$s" > "$dir/share/scenario"
  : > "$dir/share/results.txt"
  if [ -z "$base" ]; then
    qemu-img create -q -f qcow2 -F raw -b "$image/disk.img" "$dir/disk.qcow2"
  elif [ -f "target/vm/$base/disk.qcow2" ] && ! grep -q '^FAIL ' "target/vm/$base/results.txt"; then
    qemu-img create -q -f qcow2 -F qcow2 -b "$(pwd)/target/vm/$base/disk.qcow2" "$dir/disk.qcow2"
    [ -d "target/vm/$base/share/boot" ] && cp -r "target/vm/$base/share/boot" "$dir/share/boot"
  else
    echo "FAIL $s/base it starts from $base's disk, and $base failed" > "$dir/results.txt"
    return
  fi
  if [ "$s" = cloud-init ]; then
    seed_disk "$dir" || { echo "FAIL $s/seed could not make the NoCloud seed disk" > "$dir/results.txt"; return; }
    extra=(-drive "file=$dir/seed.img,if=virtio,format=raw,readonly=on"); cmdline=""
  fi
  for n in $(seq 1 $MAX_BOOTS); do
    local tb; tb=$(date +%s)
    echo "=== host: boot $n $(date -u +%FT%TZ)" >> "$dir/console.log"
    boot "$dir" "$cmdline" "${extra[@]}"; local rc=$?
    echo "boot $n: qemu ran $(( $(date +%s) - tb )) s (exit $rc)" >> "$dir/share/timings.txt"
    if [ "$rc" -ne 0 ]; then
      echo "FAIL $s/boot$n qemu exited $rc (timeout ${boot_timeout} s is 124; see $dir/console.log)" >> "$dir/share/results.txt"
      break
    fi
    [ -f "$dir/share/done" ] && break
    [ -f "$dir/share/reboot-requested" ] && { rm -f "$dir/share/reboot-requested"; continue; }
    echo "FAIL $s/boot$n the guest stopped before the scenario finished (see $dir/console.log)" >> "$dir/share/results.txt"
    break
  done
  [ -f "$dir/share/done" ] || grep -q "^FAIL $s/boot" "$dir/share/results.txt" ||
    echo "FAIL $s/boots the scenario did not finish within $MAX_BOOTS boots" >> "$dir/share/results.txt"
  grep -q . "$dir/share/results.txt" || echo "FAIL $s/results the guest reported no check" >> "$dir/share/results.txt"
  echo "scenario: $(( $(date +%s) - t0 )) s in all" >> "$dir/share/timings.txt"
  cp "$dir/share/results.txt" "$dir/results.txt"; cp "$dir/share/timings.txt" "$dir/timings.txt" 2>/dev/null
  # A base's disk stays until the scenarios that start from it are done.
  case "$bases" in *" $s "*) ;; *) [ -n "${IBDRIVER_VM_KEEP:-}" ] || rm -f "$dir/disk.qcow2" ;; esac
  log "$s: $(( $(date +%s) - t0 )) s ($(tr '\n' ';' < "$dir/timings.txt"))"
}

# Scenarios run side by side, IBDRIVER_VM_JOBS at a time (default 2): a guest spends much of
# its time waiting (the agent's retries and polls, timers, reboots), so two share the cores well.
# A scenario starts once its base has finished (target/vm/.finished/<base>).
jobs=${IBDRIVER_VM_JOBS:-2}
t_all=$(date +%s)
fin=target/vm/.finished
rm -rf "$fin"; mkdir -p "$fin"
pending=$scenarios
while [ -n "$pending" ]; do
  next="" rest=""
  for s in $pending; do
    b=$(base_of "$s")
    if [ -z "$next" ] && { [ -z "$b" ] || [ -f "$fin/$b" ]; }; then next=$s; else rest="$rest $s"; fi
  done
  running=$(jobs -rp | wc -l)
  [ -n "$next" ] || [ "$running" -gt 0 ] || give_up "nothing runs and nothing can start: $pending"
  if [ -z "$next" ] || [ "$running" -ge "$jobs" ]; then wait -n; continue; fi
  ( run_scenario "$next"; touch "$fin/$next" ) &
  pending=${rest# }
done
wait
for b in $bases; do [ -n "${IBDRIVER_VM_KEEP:-}" ] || rm -f "target/vm/$b/disk.qcow2"; done
passed=0 failed=0
for s in $scenarios; do
  r=target/vm/$s/results.txt
  [ -s "$r" ] || echo "FAIL $s/results the scenario left no results" > "$r"
  cat "$r"
  passed=$(( passed + $(grep -c '^PASS ' "$r") ))
  failed=$(( failed + $(grep -c '^FAIL ' "$r") ))
done
log "all scenarios: $(( $(date +%s) - t_all )) s with $jobs at a time"
echo "vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
