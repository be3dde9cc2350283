# agent-service: Debian's waagent runs the extension handler loop as a systemd service against
# a fake WireServer and host plugin on loopback, which serve a goal state with our extension
# (manifest and zip from loopback, public settings and protected settings encrypted to the
# agent's own transport certificate). The checks read the status blob the agent uploads.
. "$S/guest/lib.sh"
SECRET=ibtestProxyS3cret
start_agent '{"ipoib":"native"}' "{\"proxy\":\"http://ibtest:$SECRET@127.0.0.1:3128\"}"
check agent-active systemctl is-active --quiet walinuxagent.service
if wire wait --timeout 900 > /root/wait.json 2>&1; then pass goal-state-reached; else fail goal-state-reached "$(tail -c 300 /root/wait.json)"; fi
cp /root/wait.json "$S/state/wait.json"
note "agent-service: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: v for k, v in d.items() if "second" in k or k.startswith("since")})' /root/wait.json 2>/dev/null)"
cp "$WIRE/status/status-latest.json" "$S/state/" 2>/dev/null
check uploaded-extension-success uploaded_has '^success 0 '
check uploaded-handler-ready uploaded_has '^success 0 Ready'
check uploaded-health-substatus uploaded_has 'health=success' 
check_status handler-status-file "$AGENT_HD/status/0.status" success
check worker-in-transient-unit grep -q 'worker started as a transient systemd unit' "$LOG"
check inbox-installed sh -c 'dpkg-query -W -f="\${Status}\n" rdma-core | grep -q "install ok installed"'
check modules-loaded loaded ib_uverbs ib_umad rdma_ucm ib_ipoib
check ipoib-address sh -c 'ip -4 -o addr show dev ib0 | grep -q " 172.16.1.4/16 "'
check_within health-timer-installed 60 systemctl is-active --quiet ibdriver-health.timer
# The proxy password reached the handler only encrypted; nothing we or the agent wrote has it.
leaks() {
  grep -rlF "$SECRET" /var/log /var/lib/infiniband-driver-linux "$AGENT_HD" "$WIRE/status" /etc/systemd /run/systemd/transient 2>/dev/null
  journalctl --no-pager -o cat | grep -F "$SECRET"
  for p in /proc/[0-9]*; do tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF "$SECRET" && echo "cmdline of $p"; tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qF "$SECRET" && echo "environ of $p"; done
  return 0
}
l=$(leaks); if [ -z "$l" ]; then pass secret-not-in-logs-status-env; else fail secret-not-in-logs-status-env "$(echo "$l" | head -3 | tr '\n' ' ')"; fi
