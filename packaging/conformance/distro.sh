# Sourced by fetch_waagent.sh and upstream_agent.sh: both agent lines import `distro` (osutil
# factory). Install it for whatever interpreter `python3` is: pip first (pyenv/venv); Debian's
# own python3 refuses plain pip (PEP 668) and may lack pip, so then the Debian package.
if ! python3 -c 'import distro' 2>/dev/null; then
    python3 -m pip install --quiet distro >&2 ||
        python3 -m pip install --quiet --break-system-packages distro >&2 ||
        apt-get install -y -q python3-distro >&2 ||
        { apt-get update >&2 && apt-get install -y -q python3-distro >&2; }
fi
