#!/usr/bin/env bash
# Installs what the integration tests need to run a throwaway Samba AD DC on
# loopback (see tests/src/dc/). Idempotent: it only touches apt when one of the
# binaries below is missing, so test and demo scripts can call it every time.
set -euo pipefail

# samba: the DC itself; samba-tool: provisioning (samba-ad-dc / python3-samba);
# ldapsearch: handy for poking at the DC by hand; openssl: the test CA and
# server certificate; systemd-analyze: checks the shipped systemd unit; tmux: a
# real terminal for the progress bar test; node and npm: the JavaScript plugin project that the suite builds.
required=(samba samba-tool ldapsearch openssl systemd-analyze tmux node npm)
packages=(samba samba-ad-dc ldap-utils winbind openssl systemd tmux nodejs npm)

# samba lives in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

# componentize-py builds the Python plugin project that `plugin new --lang python` writes; the suite builds one.
# (Node's componentize-js comes with the JavaScript project itself, through npm.)
if ! command -v componentize-py >/dev/null 2>&1; then
    echo "tests/setup.sh: installing componentize-py from PyPI" >&2
    python3 -m pip install --quiet componentize-py==0.25.1 ||
        python3 -m pip install --quiet --break-system-packages componentize-py==0.25.1
fi

missing=()
for bin in "${required[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

echo "tests/setup.sh: missing ${missing[*]}; installing ${packages[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
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
