#!/bin/sh
# Prepare Debian's waagent (2.7.3.0) to run as a service against the fake fabric on loopback
# (wireserver.py). Runs inside the guest (or a chroot) as root; idempotent.
#
#   agent-setup.sh [--endpoint 127.0.0.1] [--period SECONDS] [--verbose] [--no-systemd]
#                  [--fabric-unit ZIP STATE_DIR]
#
# What it does:
#   * /var/lib/waagent/Protocol = WireProtocol and WireServerEndpoint = ENDPOINT (no newline):
#     with them, `waagent -run-exthandlers` skips protocol detection (DHCP, 168.63.129.16);
#   * the transport certificate pair the daemon would have made during detection
#     (TransportCert.pem/TransportPrivate.pem; without it the agent cannot ask for Certificates);
#   * /etc/waagent.conf: no provisioning, no resource disk, no firewall, no RDMA setup, no
#     auto-update, no log collection, extensions enabled;
#   * unless --no-systemd: a drop-in for walinuxagent.service that drops the packaged
#     ConditionVirtualization=microsoft and runs `waagent -run-exthandlers -debug` (the daemon mode
#     deletes the endpoint file and re-detects; without -debug the extension handler exits as an
#     orphan); with --fabric-unit, also ibwire-fabric.service running wireserver.py (ordered
#     before the agent, started only once both ports listen).
set -eu

endpoint=127.0.0.1
period=
verbose=n
systemd=y
fabric_zip=
fabric_state=
here=$(cd "$(dirname "$0")" && pwd)

while [ $# -gt 0 ]; do
  case "$1" in
    --endpoint) endpoint=$2; shift 2 ;;
    --period) period=$2; shift 2 ;;
    --verbose) verbose=y; shift ;;
    --no-systemd) systemd=n; shift ;;
    --fabric-unit) fabric_zip=$2; fabric_state=$3; shift 3 ;;
    *) echo "agent-setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "agent-setup.sh: run as root" >&2; exit 1; }
command -v waagent >/dev/null || { echo "agent-setup.sh: waagent is not installed (apt-get install waagent)" >&2; exit 1; }

lib=/var/lib/waagent
mkdir -p "$lib"
chmod 700 "$lib"
printf '%s' WireProtocol > "$lib/Protocol"
printf '%s' "$endpoint" > "$lib/WireServerEndpoint"

# The same command the agent's own protocol detection runs (cryptutil.gen_transport_cert).
if [ ! -s "$lib/TransportCert.pem" ] || [ ! -s "$lib/TransportPrivate.pem" ]; then
  openssl req -x509 -nodes -subj /CN=LinuxTransport -days 730 -newkey rsa:2048 \
    -keyout "$lib/TransportPrivate.pem" -out "$lib/TransportCert.pem" 2>/dev/null
  chmod 600 "$lib/TransportPrivate.pem"
fi

[ -f /etc/waagent.conf ] && [ ! -f /etc/waagent.conf.packaged ] && cp -p /etc/waagent.conf /etc/waagent.conf.packaged
{
  echo "# Written by agent-setup.sh (ibdriver VM test tier): the agent against a fake fabric on loopback."
  echo "Extensions.Enabled=y"
  echo "Provisioning.Agent=disabled"
  echo "Provisioning.Enabled=n"
  echo "Provisioning.DeleteRootPassword=n"
  echo "Provisioning.RegenerateSshHostKeyPair=n"
  echo "Provisioning.MonitorHostName=n"
  echo "Provisioning.DecodeCustomData=n"
  echo "Provisioning.ExecuteCustomData=n"
  echo "Provisioning.AllowResetSysUser=n"
  echo "ResourceDisk.Format=n"
  echo "ResourceDisk.EnableSwap=n"
  echo "Logs.Verbose=$verbose"
  echo "Logs.Collect=n"
  echo "Logs.Console=n"
  echo "OS.EnableFIPS=n"
  echo "OS.EnableFirewall=n"
  echo "OS.EnableRDMA=n"
  echo "OS.UpdateRdmaDriver=n"
  echo "OS.CheckRdmaDriver=n"
  echo "OS.OpensslPath=/usr/bin/openssl"
  echo "OS.SshDir=/etc/ssh"
  echo "AutoUpdate.Enabled=n"
  echo "HttpProxy.Host=None"
  echo "HttpProxy.Port=None"
  if [ -n "$period" ]; then
    echo "Extensions.GoalStatePeriod=$period"
    echo "Extensions.InitialGoalStatePeriod=$period"
  fi
} > /etc/waagent.conf

[ "$systemd" = y ] || exit 0

after=
if [ -n "$fabric_zip" ]; then
  mkdir -p /opt/ibwire
  [ "$here/wireserver.py" = /opt/ibwire/wireserver.py ] || cp "$here/wireserver.py" /opt/ibwire/wireserver.py
  cat > /etc/systemd/system/ibwire-fabric.service <<EOF
[Unit]
Description=Fake Azure fabric (WireServer + HostGAPlugin) on loopback for the ibdriver VM tests
Before=walinuxagent.service

[Service]
Environment=WIRESERVER_ARGS=
EnvironmentFile=-/etc/default/ibwire-fabric
ExecStartPre=/bin/rm -f /run/ibwire-ready
ExecStart=/bin/sh -c 'exec /usr/bin/python3 /opt/ibwire/wireserver.py serve --zip $fabric_zip --state-dir $fabric_state --ready-file /run/ibwire-ready \$WIRESERVER_ARGS'
# Python and openssl under TCG on a busy boot took 28 s to get here: bound at 180 s.
ExecStartPost=/bin/sh -c 'i=0; while [ ! -f /run/ibwire-ready ]; do i=\$((i+1)); [ \$i -le 900 ] || exit 1; sleep 0.2; done'

[Install]
WantedBy=multi-user.target
EOF
  after="ibwire-fabric.service"
fi

mkdir -p /etc/systemd/system/walinuxagent.service.d
cat > /etc/systemd/system/walinuxagent.service.d/ibwire.conf <<EOF
[Unit]
# The packaged unit has ConditionVirtualization=microsoft; an empty assignment resets conditions.
ConditionVirtualization=
${after:+Requires=$after}
${after:+After=$after}

[Service]
# A stale N_waagent.pid makes the agent wait for (and at last SIGKILL) the process it names.
ExecStartPre=/bin/sh -c 'rm -f /run/*_waagent.pid'
ExecStart=
ExecStart=/usr/sbin/waagent -run-exthandlers -debug
EOF
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  [ -z "$fabric_zip" ] || systemctl enable ibwire-fabric.service >/dev/null 2>&1 || true
  systemctl enable walinuxagent.service >/dev/null 2>&1 || true
else
  echo "agent-setup.sh: systemd is not running here; units written, not reloaded" >&2
fi
echo "agent-setup.sh: done; start with: systemctl start ${after:+$after }walinuxagent.service"
