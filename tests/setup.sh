#!/usr/bin/env bash
# Installs what the integration tests need: a throwaway Samba AD DC on loopback (see tests/src/dc/), and the
# Python and JavaScript toolchains of the plugin projects the suite builds. Idempotent: it only touches apt and
# pip when one of the binaries below is missing, so test and demo scripts can call it every time.
set -euo pipefail

# samba: the DC itself; samba-tool: provisioning (samba-ad-dc / python3-samba); ldapsearch: handy for poking at
# the DC by hand; openssl: the test CA and server certificate; systemd-analyze: checks the shipped systemd unit;
# tmux: a real terminal for the progress bar test; promtool (Debian's prometheus package): checks the shipped
# alert rules; pip3: installs componentize-py below; node and npm: the
# JavaScript plugin project (its componentize-js comes through npm, with the project).
required=(samba samba-tool ldapsearch openssl systemd-analyze tmux promtool pip3 node npm)
packages=(samba samba-ad-dc ldap-utils winbind openssl systemd tmux prometheus python3-pip nodejs npm)

# samba lives in /usr/sbin, and pip's user scripts in ~/.local/bin: neither is on every user's PATH.
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.local/bin"

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    sudo=(false)
fi

missing=()
for bin in "${required[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/setup.sh: missing ${missing[*]}; installing ${packages[*]}" >&2
    if [ "${sudo[0]:-}" = false ]; then
        echo "tests/setup.sh: need root (or sudo) to install packages" >&2
        exit 1
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"
    for bin in "${required[@]}"; do
        if ! command -v "$bin" >/dev/null 2>&1; then
            echo "tests/setup.sh: $bin still missing after install" >&2
            exit 1
        fi
    done
fi

# componentize-py builds the Python plugin project that `plugin new --lang python` writes. Debian's Python is
# "externally managed", so pip is told that installing a tool for the tests is what is meant.
if ! command -v componentize-py >/dev/null 2>&1; then
    echo "tests/setup.sh: installing componentize-py from PyPI" >&2
    python3 -m pip install --quiet componentize-py==0.25.1 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages componentize-py==0.25.1
    command -v componentize-py >/dev/null 2>&1 || {
        echo "tests/setup.sh: componentize-py is not on PATH after pip installed it" >&2
        exit 1
    }
fi
