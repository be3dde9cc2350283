# doca-dkms-fail: the fixture's broken variant, whose mlx5_core does not compile while its
# package script exits 0, as vendor scripts do. apt reports success; the handler's DKMS check
# must not: status error 217 quoting make.log (the compiler's error and the log's end), and
# the guest is not rebooted.
. "$S/guest/lib.sh"
PKG=doca-host_3.2.0-125001-25.10-debian12_amd64.deb
case "$IBTEST_BOOT" in
1)
  modprobe mlx5_ib
  start_agent "$(doca_settings doca-broken "$PKG")" ''
  if wire wait --timeout 1800 > /root/wait.json 2>&1; then pass goal-state-reached; else fail goal-state-reached "$(tail -c 300 /root/wait.json)"; fi
  cp "$WIRE/status/status-latest.json" "$S/state/" 2>/dev/null
  check_status enable-error "$AGENT_HD/status/0.status" error
  check uploaded-error-217 uploaded_has '^error 217 '
  check package-script-masked-the-failure sh -c 'dpkg-query -W -f="\${Status}" mlnx-ofed-kernel-dkms | grep -q "install ok installed"'
  check dkms-not-installed sh -c '! dkms status | grep -q ": installed"'
  quotes_make_log() {
    m=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["status"]["formattedMessage"]["message"])' "$AGENT_HD/status/0.status")
    case $m in *"first error:"*"this module does not compile"*"make.log ends:"*) ;; *) echo "$m"; return 1 ;; esac
  }
  check message-quotes-make-log quotes_make_log
  check still-the-inbox-driver sh -c 'modinfo -n mlx5_ib | grep -q "/kernel/drivers/" && grep -q "^mlx5_ib " /proc/modules'
  check no-reboot-asked sh -c '! grep -q "rebooting to activate" /var/log/azure/ib-vmext-status 2>/dev/null'
  ;;
*)
  fail no-reboot "boot $IBTEST_BOOT: the guest was rebooted"
  ;;
esac
