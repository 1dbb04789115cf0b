# Run by `cargo xtask package --check` / `cargo xtask test` as `unshare --mount ... bash -c`:
# installs the .deb ($1) into a throwaway root, checks it, removes and purges it.
#
# The throwaway root is this machine's / under an overlay whose writable layer is a tmpfs, in a
# private mount namespace: dpkg, its maintainer scripts (the group they add) and every file
# land in the tmpfs and vanish with the namespace; the real system is never written.
set -euo pipefail
deb=$1
work=$(mktemp -d /tmp/netmon-package-check.XXXXXX)
# Never `rm -rf` here: the overlay and /dev are mounted below $work. Unmounting (only in this
# namespace) is enough; the tmpfs takes everything with it.
trap 'cd /; umount -R "$work" 2>/dev/null; rmdir "$work" 2>/dev/null' EXIT
mount -t tmpfs tmpfs "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
root=$work/root
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
cp "$deb" "$root/tmp/netmon.deb"
in_root() { chroot "$root" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# Whatever an earlier install left in this copy of the machine goes first.
in_root dpkg --purge netmon >/dev/null 2>&1 || true
in_root dpkg --install /tmp/netmon.deb
echo "ok: installed $(in_root dpkg-query -W -f='${Package} ${Version}' netmon)"

files="/usr/bin/netmon
/usr/share/man/man1/netmon.1.gz
/usr/share/man/man1/netmon-watch.1.gz
/usr/share/man/man1/netmon-snapshot.1.gz
/usr/share/man/man1/netmon-top.1.gz
/usr/share/man/man1/netmon-features.1.gz
/usr/share/man/man8/netmon-agent.8.gz
/usr/share/bash-completion/completions/netmon
/usr/share/zsh/vendor-completions/_netmon
/usr/share/fish/vendor_completions.d/netmon.fish
/usr/lib/systemd/system/netmon-agent.service
/usr/lib/systemd/system/netmon-agent.socket
/etc/netmon/agent.toml
/usr/share/doc/netmon/README.md
/usr/share/doc/netmon/json.md"
for f in $files; do
    [ -f "$root$f" ] || fail "$f is not installed"
done
[ -d "$root/etc/netmon/agent.d" ] || fail "postinst did not create /etc/netmon/agent.d"
echo "ok: files in place"
in_root getent group netmon >/dev/null || fail "postinst did not create group netmon"
echo "ok: group netmon exists"
in_root dpkg-query -W -f='${Conffiles}\n' netmon | grep -q /etc/netmon/agent.toml \
    || fail "/etc/netmon/agent.toml is not a conffile"
version=$(in_root netmon --version)
case $version in *without*) fail "the packaged netmon has no eBPF program: $version" ;; esac
echo "ok: $version"

for page in netmon netmon-watch netmon-snapshot netmon-top netmon-features netmon-agent; do
    path=$(in_root man -w "$page")
    rendered=$(in_root env MANWIDTH=80 man --warnings -l "$path" 2>"$work/man.err")
    [ -s "$work/man.err" ] && fail "man $page warns: $(cat "$work/man.err")"
    echo "$rendered" | grep -q "^NAME" || fail "man $page has no NAME section"
    echo "ok: man $page renders ($(echo "$rendered" | wc -l) lines, no warnings)"
done

completion=$(in_root bash -c \
    'source /usr/share/bash-completion/completions/netmon && complete -p netmon')
echo "$completion" | grep -q -- "-F _netmon" || fail "bash completion: $completion"
echo "ok: bash completion: $completion"

units="/usr/lib/systemd/system/netmon-agent.socket /usr/lib/systemd/system/netmon-agent.service"
in_root systemd-analyze verify $units 2>"$work/verify.err" || true
[ -s "$work/verify.err" ] && fail "systemd-analyze verify: $(cat "$work/verify.err")"
echo "ok: systemd-analyze verify accepts both units"
[ -e "$root/etc/systemd/system/sockets.target.wants/netmon-agent.socket" ] \
    && fail "the socket was enabled on install"
echo "ok: units not enabled on install"
security=$(in_root systemd-analyze security --offline=yes --no-pager \
    /usr/lib/systemd/system/netmon-agent.service | tail -n 1)
echo "security: $security"

in_root dpkg --remove netmon
for f in $files; do
    case $f in /etc/*) [ -f "$root$f" ] || fail "remove took the conffile $f" ;;
        *) [ -e "$root$f" ] && fail "$f is still there after dpkg --remove" ;; esac
done
echo "ok: removed (the conffile stays until purge)"
in_root dpkg --purge netmon
[ -e "$root/etc/netmon" ] && fail "/etc/netmon is still there after purge"
echo "ok: purged, nothing left"
