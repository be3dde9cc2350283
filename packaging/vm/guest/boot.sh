#!/bin/sh
# Runs at every boot of a scenario's guest (ibtest.service, from the host's 9p share at
# /mnt/share): counts the boot, runs the scenario's script for this boot, then powers off, or
# reboots when the script asked for one (QEMU runs with -no-reboot, so the host relaunches it).
S=/mnt/share
mkdir -p "$S/state"
boot=$(( $(cat "$S/state/boots" 2>/dev/null || echo 0) + 1 ))
echo "$boot" > "$S/state/boots"
export IBTEST_BOOT="$boot" SCENARIO="$(cat "$S/scenario")" S
NAME=OpenSource.HpcCompute.InfiniBandDriverLinux
echo "boot $boot: ibtest started $(cut -d' ' -f1 /proc/uptime) s after the kernel" >> "$S/timings.txt"
echo "ibtest: scenario $SCENARIO, boot $boot" >/dev/console
# While the scenario runs, the handler's log reaches the host every 20 s and the journal's end
# every 60 s (journalctl is costly under TCG): a boot the host has to cut short (its time
# bound) still says how far it got.
( i=0; while sleep 20; do
    cp "/var/log/azure/$NAME/ibdriver.log" "$S/state/live-ibdriver.log" 2>/dev/null
    i=$((i + 1)); [ $((i % 3)) -ne 0 ] ||
      journalctl -b --no-pager -n 300 -o short-monotonic > "$S/state/live-journal.txt" 2>/dev/null
  done ) &
timeout 2100 /bin/sh "$S/guest/scenarios/$SCENARIO.sh" >"$S/state/boot$boot.log" 2>&1
rc=$?
[ "$rc" -eq 0 ] || echo "FAIL $SCENARIO/script-boot$boot exited $rc (state/boot$boot.log)" >> "$S/results.txt"
# What the handler and the agent left, for whoever reads a failure.
mkdir -p "$S/state/boot$boot-files"
for f in /var/log/azure /var/log/waagent.log /var/lib/waagent/*/status /var/lib/waagent/*/config \
         /var/lib/infiniband-driver-linux /var/lib/waagent/*.xml /var/log/cloud-init-output.log; do
  [ -e "$f" ] && cp -r --parents "$f" "$S/state/boot$boot-files/" 2>/dev/null
done
journalctl -b --no-pager -o short-monotonic > "$S/state/journal-boot$boot.txt" 2>/dev/null
sync
if [ -f "$S/reboot-requested" ] && [ "$rc" -eq 0 ]; then
  echo "ibtest: rebooting" >/dev/console
  systemctl reboot
else
  rm -f "$S/reboot-requested"
  touch "$S/done"
  echo "ibtest: done, powering off" >/dev/console
  systemctl poweroff
fi
