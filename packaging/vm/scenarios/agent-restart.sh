# agent-restart: `systemctl restart` of the agent's service and `kill -9` of the agent while
# our worker is in the middle of a long stage (apt's download, held by the local repository):
# the worker keeps running in its transient unit and finishes; the agent's next enable sees
# it and does not start a second one.
. "$S/guest/lib.sh"
mkdir -p /run/ibtest; touch /run/ibtest/hold-debs
start_agent '{"ipoib":"native"}' ''
check_within worker-reaches-download 900 test -f /run/ibtest/deb-requested
unit=$(systemctl list-units --type=service --all --no-legend --plain 'ibdriver-worker-*' | awk '{print $1}' | head -n1)
pid0=$(systemctl show -p MainPID --value "$unit" 2>/dev/null)
check worker-in-transient-unit sh -c "[ -n '$unit' ] && [ '${pid0:-0}' != 0 ]"
worker_same() { [ "$(systemctl show -p MainPID --value "$unit")" = "$pid0" ] && kill -0 "$pid0"; }

starts0=$(count_in_log 'worker started as a transient systemd unit')
agent0=$(systemctl show -p MainPID --value walinuxagent.service)
systemctl restart walinuxagent.service
check agent-restarted sh -c "[ \"\$(systemctl show -p MainPID --value walinuxagent.service)\" != '$agent0' ]"
check worker-survives-agent-restart worker_same

agent1=$(systemctl show -p MainPID --value walinuxagent.service)
kill -9 "$agent1"
agent_back() { p=$(systemctl show -p MainPID --value walinuxagent.service); [ "$p" != 0 ] && [ "$p" != "$agent1" ]; }
check_within agent-back-after-kill 120 agent_back
check worker-survives-agent-kill worker_same
# The restarted agent runs enable again: it must find our worker, not start a second one.
check_within agent-enable-sees-worker 300 grep -q 'a worker is already running for this sequence number' "$LOG"
check still-one-worker worker_same

rm -f /run/ibtest/hold-debs
if wire wait --timeout 900 > /root/wait.json 2>&1; then pass goal-state-reached; else fail goal-state-reached "$(tail -c 300 /root/wait.json)"; fi
check_status handler-status-success "$AGENT_HD/status/0.status" success
check one-worker-started sh -c "[ \"\$(grep -c 'worker started as a transient systemd unit' '$LOG')\" = '$starts0' ]"
check one-worker-unit sh -c "[ \"\$(journalctl -b --no-pager -o cat | grep -c 'Started ibdriver-worker-')\" = 1 ]"
check uploaded-success uploaded_has '^success 0 Ready'
