#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are not
# installed yet. Does nothing (and needs no root) when all are present.
set -euo pipefail
missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Debian's nodejs/npm are only needed when no node is on the PATH at all
# (a machine may carry its own Node.js build with npm inside).
if command -v node >/dev/null && command -v npm >/dev/null; then
    kept=(); for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || kept+=("$p"); done
    missing=("${kept[@]}")
fi
check_node() { # the official openai SDK (v6) used by the server tests needs Node.js >= 20
    [[ " $* " == *" nodejs "* ]] || return 0
    local major
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if ((major < 20)); then
        echo "deps: Node.js $(node --version 2>/dev/null || echo none) found; the server tests need Node.js 20 or later" >&2
        echo "deps: (Debian 12 ships 18; install a newer nodejs package, e.g. from NodeSource)" >&2
        return 1
    fi
}
if ((${#missing[@]} == 0)); then
    check_node "$@"
    exit
fi
echo "deps: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
check_node "$@"
