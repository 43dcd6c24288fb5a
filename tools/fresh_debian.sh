#!/usr/bin/env bash
# Proves the README on a machine that has nothing: builds a minbase Debian 12
# root with debootstrap (as cloud and container images are), puts a clean
# clone of this repository's HEAD in it (no ../shared), and runs the README's
# set-up block inside, exactly as written: the prerequisite line, `make run`
# (then the curl example it prints, which must answer with a completion) and
# `make test`. Runs in private PID and mount namespaces; nothing outside the
# root is touched. As root; takes 15-30 minutes.
# Usage: tools/fresh_debian.sh [ROOT]   (default /var/tmp/metastate-fresh;
#        the log is ROOT.log; MIRROR=... picks the Debian mirror)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-/var/tmp/metastate-fresh}
log=$root.log
mirror=${MIRROR:-http://deb.debian.org/debian}
[[ $(id -u) == 0 ]] || { echo "fresh_debian: run as root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || bash "$repo/tools/deps.sh" debootstrap

# The README's first sh block: the prerequisite line, the clone, make run, make test.
mapfile -t block < <(awk '/^```sh$/ { on = 1; next } on && /^```$/ { exit } on' "$repo/README.md")
prereq=$(sed 's/ *#.*//' <<<"${block[0]}")
run_cmd=$(printf '%s\n' "${block[@]}" | grep -m1 '^make run' | sed 's/ *#.*//')
test_cmd=$(printf '%s\n' "${block[@]}" | grep -m1 '^make test' | sed 's/ *#.*//')
[[ $prereq == apt-get* && $run_cmd == "make run" && $test_cmd == "make test" ]] ||
    { echo "fresh_debian: README's first sh block is not prerequisite / clone / make run / make test" >&2; exit 1; }

t0=$SECONDS
stamp() { printf '[%4ds] %s\n' $((SECONDS - t0)) "$*" | tee -a "$log"; }
: >"$log"
if mountpoint -q "$root/proc" 2>/dev/null || grep -q " $root/" /proc/mounts; then
    echo "fresh_debian: something is mounted under $root; unmount it first" >&2; exit 1
fi
rm -rf "$root"
stamp "debootstrap --variant=minbase bookworm $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >>"$log" 2>&1
# What a Debian 12 image's sources.list has: the release, its updates, security.
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A network whose TLS goes through an intercepting proxy (as this workplace's
# does) signs with a local CA: carry the host's local CAs over, so that the
# root's ca-certificates (installed by the prerequisite line) trusts them as
# the host does. A machine on an open network has none and needs none.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    stamp "carried over the host's local CAs: $(cd /usr/local/share/ca-certificates && echo *.crt)"
fi
git clone -q --no-local "$repo" "$root/root/metastate"
stamp "clean clone of $(git -C "$repo" rev-parse --short HEAD) in /root/metastate; no ../shared"

cat >"$root/root/readme.sh" <<INNER
set -uo pipefail
t0=\$SECONDS
stamp() { printf '[%4ds inside] %s\n' \$((SECONDS - t0)) "\$*"; }
cd /root/metastate
for c in make curl node git; do command -v \$c >/dev/null && stamp "\$c is present before set-up" || stamp "\$c: not installed"; done
stamp "$prereq"
$prereq || exit 10
stamp "$run_cmd (in the background until its curl example answers)"
setsid $run_cmd >/root/run.log 2>&1 &
run_pid=\$!
example=""
for _ in \$(seq 1200); do
    if grep -q 'try: curl' /root/run.log; then
        example=\$(sed -n '/try: curl/,/max_tokens/p' /root/run.log | sed 's/^ *try: //')
        break
    fi
    kill -0 \$run_pid 2>/dev/null || break
    sleep 1
done
[[ -n \$example ]] || { cat /root/run.log; stamp "make run did not print its example"; exit 11; }
stamp "server up; its example: \$example"
ok=""
for _ in \$(seq 120); do
    if out=\$(sh -c "\$example" 2>&1) && grep -q '"choices"' <<<"\$out"; then ok=1; break; fi
    sleep 1
done
stamp "completion: \$out"
kill -INT -- -\$run_pid 2>/dev/null; wait \$run_pid 2>/dev/null
[[ -n \$ok ]] || { tail -20 /root/run.log; stamp "the printed curl example did not answer with a completion"; exit 12; }
stamp "$test_cmd"
$test_cmd
rc=\$?
stamp "make test exited \$rc"
exit \$rc
INNER

stamp "running the README inside the root (private PID and mount namespaces)"
set +e
unshare --pid --fork --mount bash -c '
    set -e
    # The root is a mount point of its own, as / is on a real machine (the
    # tests start servers in namespaces of their own, which needs that).
    mount --make-rprivate /
    mount --bind "$1" "$1"
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"; mount --make-rslave "$1/dev"
    mount -t sysfs sysfs "$1/sys"
    exec chroot "$1" /usr/bin/env -i HOME=/root TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash /root/readme.sh' _ "$root" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
set -e
stamp "done: exit status $rc"
echo "== fresh Debian summary (full log: $log)"
grep -E '^\[ *[0-9]+s|^(unit tests|server tests|reference checks|browser|total:|  [0-9]+ skipped:)' "$log" | grep -v '^\[.*inside\] \(make\|curl\|node\|git\)' || true
exit "$rc"
