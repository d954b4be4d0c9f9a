#!/usr/bin/env bash
# A second Docker engine on this machine, standing in for a second host in
# fleet tests ("engine B"). Needs root, dockerd/containerd/runc,
# fuse-overlayfs, iproute2 and util-linux's nsenter.
#
#     scripts/second-engine.sh up            # prints `export ...` lines
#     eval "$(scripts/second-engine.sh up)"
#     scripts/second-engine.sh load IMAGE...
#     scripts/second-engine.sh nsexec CMD... # CMD inside engine B's netns
#     scripts/second-engine.sh stop          # kill -9 everything (host loss)
#     scripts/second-engine.sh start         # boot again on the same data
#     scripts/second-engine.sh status        # exit 0 iff engine B answers
#     scripts/second-engine.sh down          # stop and remove it all
#
# Engine B is a dockerd with data root, exec root, pidfile, config file and
# socket of its own (plus a TCP listener with mutual TLS, see below), running in a network namespace of its own (never in
# the machine's: its networking must not touch the first engine's docker0),
# joined to the machine's namespace by a veth pair. Processes started with
# `nsexec` (e.g. a workers-spawner daemon for engine B) live in that
# namespace too: they reach the machine at WS_ENGINE_B_HOST_ADDR (a Redis
# there must listen on that address or on 0.0.0.0, not only 127.0.0.1, and
# be started after `up`, which creates the address) and have no other route
# out: no default route, no DNS. Engine B's containers reach the machine
# there too (bridge: NATed by engine B inside its netns; no rule or sysctl
# is needed in the machine's namespace). The machine reaches the namespace
# (and ports published by engine B) at WS_ENGINE_B_NS_ADDR. Everything
# shares the machine's filesystem and mounts, and the hostname; engine B
# has an engine ID (`docker info`) of its own.
#
# Settings (environment):
#   WS_ENGINE_B_NAME     ws-engine-b: names the netns (/run/netns/NAME), the
#                        socket (/run/NAME.sock), the cgroup parent of its
#                        containers (/NAME) and the state dir
#                        ${TMPDIR:-/tmp}/NAME (data root, exec root, pidfile,
#                        config, key, tls/, dockerd.log; the exec root is
#                        STATE/x, or /run/NAME.x when that would be too long
#                        for the unix sockets dockerd puts there)
#   WS_ENGINE_B_SUBNET   10.213.0.0/30: the veth pair's subnet; the machine's
#                        end gets the first address, the namespace's the second
#   WS_ENGINE_B_VETH     wsb: veth names are ${WS_ENGINE_B_VETH}-h (machine)
#                        and ${WS_ENGINE_B_VETH}-n (namespace), <= 15 chars
#   WS_ENGINE_B_BIP      unset: engine B's default bridge (inside its netns);
#                        unset leaves Docker's default (172.17.0.1/16)
#   WS_ENGINE_B_TIMEOUT  60: seconds to wait for dockerd to answer/stop
#   DOCKER_HOST          the first engine, for `load` (else the local socket)
# Two engines B at once need different NAME, SUBNET and VETH.
#
# `up` and `start` print on stdout, for eval:
#   WS_ENGINE_B_HOST=unix:///run/NAME.sock  WS_ENGINE_B_NETNS=/run/netns/NAME
#   WS_ENGINE_B_HOST_ADDR (machine side)   WS_ENGINE_B_NS_ADDR (netns side)
#   WS_ENGINE_B_STATE (state dir)
#   WS_ENGINE_B_TCP=tcp://NS_ADDR:2376 (mutual TLS; reachable from the
#                        machine's namespace and from inside the netns)
#   WS_ENGINE_B_TLS_CA   STATE/tls/ca.pem: the CA that signed both certs
#   WS_ENGINE_B_TLS_CERT STATE/tls/client-cert.pem: a client cert it accepts
#   WS_ENGINE_B_TLS_KEY  STATE/tls/client-key.pem (PKCS#8 RSA 2048, 0600)
# Everything else goes to stderr.
#
# TLS: the unix socket needs none; the TCP listener requires a client cert
# signed by the CA (--tlsverify). `up`/`start` create STATE/tls/ once with
# openssl (CA, server cert with SAN IP:NS_ADDR, DNS:localhost,
# IP:127.0.0.1, client cert; 30 days) and reuse it afterwards, redoing only
# what is missing, expires within a day, or (server cert) lacks NS_ADDR.
#   docker --tlsverify --tlscacert "$WS_ENGINE_B_TLS_CA" \
#       --tlscert "$WS_ENGINE_B_TLS_CERT" --tlskey "$WS_ENGINE_B_TLS_KEY" \
#       -H "$WS_ENGINE_B_TCP" version
#
#   up      creates the netns and veth (reused when there), writes the config
#           and starts dockerd in the netns; reuses a running engine B
#   load    copies images from the first engine unless engine B already has
#           the same image id
#   stop    host loss: SIGSTOP then SIGKILL engine B's dockerd, its
#           containerd, docker-proxy, containerd-shims (those with engine B's
#           containerd address only) and the processes in its containers'
#           cgroups (paused ones thawed so that they die); unmounts what
#           they had mounted, empties the exec root (as a reboot empties
#           /run) and removes the socket. The data root stays: `start` finds
#           the old containers exited (255), except that those with a restart
#           policy are started again. The netns, the veth and processes
#           started with nsexec stay (a test kills its own daemon).
#   start   like up, but requires the state dir left by up/stop
#   down    stop (if running), unmount what is left under the state dir,
#           remove it (certs included), the veth, the netns and the socket; exits 0 when
#           nothing is up. Processes still in the netns are listed, not killed.
#   status  exit 0 iff engine B answers
#   nsexec  runs CMD in engine B's netns (nsenter --net, not `ip netns
#           exec`, which remounts /sys), with DOCKER_HOST set to engine B
set -euo pipefail

log() { echo "[second-engine] $*" >&2; }
die() { log "$*"; exit 1; }

NAME="${WS_ENGINE_B_NAME:-ws-engine-b}"
SUBNET="${WS_ENGINE_B_SUBNET:-10.213.0.0/30}"
VETH="${WS_ENGINE_B_VETH:-wsb}"
BIP="${WS_ENGINE_B_BIP:-}"
TIMEOUT="${WS_ENGINE_B_TIMEOUT:-60}"

[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad WS_ENGINE_B_NAME: $NAME"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "bad WS_ENGINE_B_TIMEOUT: $TIMEOUT"
VETH_H="$VETH-h"
VETH_N="$VETH-n"
[ ${#VETH_H} -le 15 ] || die "veth name $VETH_H longer than 15 characters"

if [[ "$SUBNET" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)/([0-9]+)$ ]]; then
    _o4=$(( BASH_REMATCH[4] & ~((1 << (32 - BASH_REMATCH[5])) - 1) & 255 ))
    PREFIX="${BASH_REMATCH[5]}"
    if [ "$PREFIX" -lt 8 ] || [ "$PREFIX" -gt 30 ]; then
        die "WS_ENGINE_B_SUBNET: prefix must be 8..30"
    fi
    _net="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
    HOST_ADDR="$_net.$(( _o4 + 1 ))"
    NS_ADDR="$_net.$(( _o4 + 2 ))"
else
    die "bad WS_ENGINE_B_SUBNET: $SUBNET (want A.B.C.D/N)"
fi

NETNS="/run/netns/$NAME"
SOCK="/run/$NAME.sock"
HOST="unix://$SOCK"
STATE="${TMPDIR:-/tmp}/$NAME"
DATA="$STATE/data"
CONF="$STATE/daemon.json"
PIDFILE="$STATE/dockerd.pid"
LOGFILE="$STATE/dockerd.log"
TLS="$STATE/tls"
TCP_PORT=2376
TCP="tcp://$NS_ADDR:$TCP_PORT"
CGROUP="/$NAME"
# libnetwork puts a socket named by a 64-hex id under EXEC/libnetwork/, and
# unix socket paths end at 107 bytes: keep the exec root short.
EXEC="$STATE/x"
if [ ${#EXEC} -gt 30 ]; then
    EXEC="/run/$NAME.x"
fi
[ ${#EXEC} -le 30 ] || die "exec root $EXEC too long for unix sockets; use a shorter WS_ENGINE_B_NAME"

dockerb() { docker -H "$HOST" "$@"; }
# (bounded: a frozen dockerd would hold the CLI forever)
answers() { timeout 10 docker -H "$HOST" version >/dev/null 2>&1; }

print_exports() {
    printf 'export WS_ENGINE_B_HOST=%q\n' "$HOST"
    printf 'export WS_ENGINE_B_NETNS=%q\n' "$NETNS"
    printf 'export WS_ENGINE_B_HOST_ADDR=%q\n' "$HOST_ADDR"
    printf 'export WS_ENGINE_B_NS_ADDR=%q\n' "$NS_ADDR"
    printf 'export WS_ENGINE_B_STATE=%q\n' "$STATE"
    printf 'export WS_ENGINE_B_TCP=%q\n' "$TCP"
    printf 'export WS_ENGINE_B_TLS_CA=%q\n' "$TLS/ca.pem"
    printf 'export WS_ENGINE_B_TLS_CERT=%q\n' "$TLS/client-cert.pem"
    printf 'export WS_ENGINE_B_TLS_KEY=%q\n' "$TLS/client-key.pem"
}

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root"
}

# --- processes --------------------------------------------------------------

# Alive and not a zombie.
alive() {
    local st
    [ -r "/proc/$1/stat" ] || return 1
    st="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

dockerd_pid() {
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    # the pid must still be our dockerd, not a reused number
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--pidfile $PIDFILE" || return 1
    echo "$pid"
}

# Children (recursively) of the given pids.
descendants() {
    local p c
    for p in "$@"; do
        for c in $(tr -s ' ' '\n' < <(cat /proc/"$p"/task/*/children 2>/dev/null)); do
            echo "$c"
            descendants "$c"
        done
    done
}

# The cgroup dirs engine B's containers live in (v1 controllers and v2).
cgroup_dirs() {
    local d
    for d in /sys/fs/cgroup/*/"$NAME" /sys/fs/cgroup/"$NAME"; do
        [ -d "$d" ] && echo "$d"
    done
    return 0
}

# Every process of engine B: dockerd, its descendants (containerd,
# docker-proxy), containerd-shims with engine B's containerd address, the
# processes in its containers' cgroups, and fuse-overlayfs mounting its data.
engine_pids() {
    local pid cmd d f
    {
        if pid="$(dockerd_pid)"; then
            echo "$pid"
            descendants "$pid"
        fi
        # (grep first: one process instead of one per process on the machine)
        while IFS= read -r f; do
            pid="${f#/proc/}"; pid="${pid%/cmdline}"
            cmd="$( { tr '\0' ' ' < "$f"; } 2>/dev/null)" || continue
            case "$cmd" in
                *" -address $EXEC/containerd/containerd.sock "*|\
                *"--config $EXEC/containerd/containerd.toml "*|\
                *"fuse-overlayfs "*"$DATA/"*|\
                *"dockerd "*"--pidfile $PIDFILE "*)
                    echo "$pid" ;;
            esac
        done < <(grep -laF -e "$EXEC/containerd/" -e "$DATA/" -e "$PIDFILE" \
                     /proc/[0-9]*/cmdline 2>/dev/null || true)
        while read -r d; do
            find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true
        done < <(cgroup_dirs)
    } | sort -un | while read -r pid; do
        [ "$pid" != "$$" ] && alive "$pid" && echo "$pid"
    done
    return 0
}

# A paused container's processes are frozen: SIGKILL takes effect once thawed.
thaw_cgroups() {
    local f
    while read -r f; do
        case "$f" in
            */freezer.state) echo THAWED > "$f" 2>/dev/null || true ;;
            */cgroup.freeze) echo 0 > "$f" 2>/dev/null || true ;;
        esac
    done < <(cgroup_dirs | while read -r d; do
                 find "$d" \( -name freezer.state -o -name cgroup.freeze \) 2>/dev/null
             done)
    return 0
}

kill_engine() {
    local pids i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        mapfile -t pids < <(engine_pids)
        [ ${#pids[@]} -eq 0 ] && return 0
        # freeze first, so that none of them reacts to the others' deaths
        kill -STOP "${pids[@]}" 2>/dev/null || true
        mapfile -t pids < <(engine_pids)
        [ ${#pids[@]} -eq 0 ] && return 0
        kill -STOP "${pids[@]}" 2>/dev/null || true
        kill -KILL "${pids[@]}" 2>/dev/null || true
        thaw_cgroups
        [ "$i" -gt 1 ] && sleep 0.2
    done
    mapfile -t pids < <(engine_pids)
    [ ${#pids[@]} -eq 0 ] || die "could not kill: ${pids[*]}"
}

# --- mounts -----------------------------------------------------------------

# Mount points at or under the state dir or the exec root, deepest first.
mounts_under() {
    awk -v a="$STATE" -v b="$EXEC" '
        { m = $5; gsub(/\\040/, " ", m)
          if (m == a || index(m, a "/") == 1 || m == b || index(m, b "/") == 1) print length(m) "\t" m }
    ' /proc/self/mountinfo | sort -rn | cut -f2- | uniq
}

unmount_all() {
    local m i left
    for i in 1 2 3 4 5; do
        left=0
        while IFS= read -r m; do
            [ -n "$m" ] || continue
            left=1
            umount -l "$m" 2>/dev/null || umount -f "$m" 2>/dev/null || true
        done < <(mounts_under)
        [ "$left" = 0 ] && return 0
        sleep 0.2
    done
    if [ -n "$(mounts_under)" ]; then
        log "still mounted:"; mounts_under >&2
        return 1
    fi
}

remove_cgroups() {
    local d
    while read -r d; do
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done < <(cgroup_dirs)
    return 0
}

# --- network ----------------------------------------------------------------

in_ns() { nsenter --net="$NETNS" -- "$@"; }

netns_ok() {
    [ -e "$NETNS" ] && in_ns true 2>/dev/null
}

ensure_net() {
    if [ -e "$NETNS" ] && ! netns_ok; then
        log "stale $NETNS, recreating"
        ip netns delete "$NAME" 2>/dev/null || rm -f "$NETNS"
    fi
    if ! netns_ok; then
        ip netns add "$NAME"
    fi
    if ip link show "$VETH_H" >/dev/null 2>&1 && ! in_ns ip link show "$VETH_N" >/dev/null 2>&1; then
        log "$VETH_H exists without its peer in $NAME, recreating"
        ip link delete "$VETH_H"
    fi
    if ! ip link show "$VETH_H" >/dev/null 2>&1; then
        ip link add "$VETH_H" type veth peer name "$VETH_N" netns "$NAME"
    fi
    ip addr replace "$HOST_ADDR/$PREFIX" dev "$VETH_H"
    ip link set "$VETH_H" up
    in_ns ip link set lo up
    in_ns ip addr replace "$NS_ADDR/$PREFIX" dev "$VETH_N"
    in_ns ip link set "$VETH_N" up
}

delete_net() {
    local ino pids=() f
    if [ -e "$NETNS" ]; then
        ino="$(stat -L -c %i "$NETNS" 2>/dev/null || true)"
        if [ -n "$ino" ]; then
            for f in /proc/[0-9]*/ns/net; do
                if [ "$(readlink "$f" 2>/dev/null)" = "net:[$ino]" ]; then
                    f="${f#/proc/}"; pids+=("${f%%/*}")
                fi
            done
        fi
        if [ ${#pids[@]} -gt 0 ]; then
            log "WARNING: still running in netns $NAME (not killed): ${pids[*]}"
        fi
    fi
    if ip link show "$VETH_H" >/dev/null 2>&1; then
        ip link delete "$VETH_H"
    fi
    if [ -e "$NETNS" ]; then
        ip netns delete "$NAME" 2>/dev/null || { umount -l "$NETNS" 2>/dev/null || true; rm -f "$NETNS"; }
    fi
}

# --- TLS --------------------------------------------------------------------

# openssl, quiet (genpkey draws dots on stderr) unless it fails.
ossl() {
    local err
    err="$(openssl "$@" 2>&1 >/dev/null)" || { log "openssl $1 failed: $err"; return 1; }
}

# A cert (in $TLS) that is there, signed by ca.pem and valid for another day.
cert_ok() {
    [ -s "$TLS/$1" ] &&
        openssl x509 -in "$TLS/$1" -noout -checkend 86400 >/dev/null 2>&1 &&
        openssl verify -CAfile "$TLS/ca.pem" "$TLS/$1" >/dev/null 2>&1
}

# KIND (server or client) -> $TLS/KIND-cert.pem, $TLS/KIND-key.pem
issue_cert() {
    local kind="$1" t="$TLS/.$1.$$"
    ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$t-key.pem"
    ossl req -new -key "$t-key.pem" -subj "/CN=$NAME $kind" -out "$t.csr"
    ossl x509 -req -in "$t.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca-key.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -sha256 \
        -extfile "$TLS/.openssl.cnf" -extensions "$kind" -out "$t-cert.pem"
    rm -f "$t.csr"
    mv -f "$t-key.pem" "$TLS/$kind-key.pem"
    mv -f "$t-cert.pem" "$TLS/$kind-cert.pem"
}

# Creates what is missing or stale in $TLS (normally nothing: certs last 30
# days and survive stop/start), all with openssl.
ensure_tls() {
    local made=""
    mkdir -p "$TLS"
    # (umask: the keys are born 0600; the dir and the certs are readable)
    (
        umask 077
        cat > "$TLS/.openssl.cnf" <<EOF
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:$NS_ADDR, DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
        if ! [ -s "$TLS/ca-key.pem" ] || ! cert_ok ca.pem; then
            ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
                -out "$TLS/.ca-key.pem.$$"
            ossl req -x509 -new -key "$TLS/.ca-key.pem.$$" -subj "/CN=$NAME CA" \
                -set_serial "0x$(openssl rand -hex 16)" -days 30 -sha256 \
                -config "$TLS/.openssl.cnf" -extensions ca -out "$TLS/.ca.pem.$$"
            mv -f "$TLS/.ca-key.pem.$$" "$TLS/ca-key.pem"
            mv -f "$TLS/.ca.pem.$$" "$TLS/ca.pem"
            rm -f "$TLS/server-cert.pem" "$TLS/client-cert.pem"
            made="CA "
        fi
        if ! [ -s "$TLS/server-key.pem" ] || ! cert_ok server-cert.pem ||
            [[ "$(openssl x509 -in "$TLS/server-cert.pem" -noout -checkip "$NS_ADDR" 2>&1)" != *" does match "* ]]; then
            issue_cert server
            made="${made}server "
        fi
        if ! [ -s "$TLS/client-key.pem" ] || ! cert_ok client-cert.pem; then
            issue_cert client
            made="${made}client "
        fi
        chmod 644 "$TLS/ca.pem" "$TLS/server-cert.pem" "$TLS/client-cert.pem"
        chmod 600 "$TLS/ca-key.pem" "$TLS/server-key.pem" "$TLS/client-key.pem"
        if [ -n "$made" ]; then
            log "TLS: made ${made% } cert(s) in $TLS"
        fi
    )
}

# Warns if the running dockerd (if any) was started without the $TCP listener.
warn_if_no_tcp() {
    local pid cmd
    pid="$(dockerd_pid)" || return 0
    cmd="$( { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null)" || return 0
    if [[ "$cmd" != *" -H $TCP "* ]]; then
        log "WARNING: the running engine B has no $TCP listener (started by an older $0?): down and up again"
    fi
    return 0
}

# --- engine -----------------------------------------------------------------

write_config() {
    local bip_line=""
    [ -n "$BIP" ] && bip_line="\"bip\": \"$BIP\","
    cat > "$CONF.tmp" <<EOF
{
    "storage-driver": "fuse-overlayfs",
    "mtu": 1400,
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "cgroup-parent": "$CGROUP",
    $bip_line
    "deprecated-key-path": "$STATE/key.json",
    "live-restore": false
}
EOF
    mv "$CONF.tmp" "$CONF"
}

start_dockerd() {
    local pid i gone=0
    if answers; then
        log "engine B already answers on $SOCK"
        return 0
    fi
    if ! pid="$(dockerd_pid)"; then
        rm -f "$PIDFILE"
        mkdir -p "$EXEC"
        log "starting dockerd (log: $LOGFILE)"
        echo "=== $(date -Is) start" >> "$LOGFILE"
        setsid nohup nsenter --net="$NETNS" -- dockerd \
            --config-file "$CONF" \
            --data-root "$DATA" \
            --exec-root "$EXEC" \
            --pidfile "$PIDFILE" \
            -H "$HOST" \
            -H "$TCP" \
            --tlsverify \
            --tlscacert "$TLS/ca.pem" \
            --tlscert "$TLS/server-cert.pem" \
            --tlskey "$TLS/server-key.pem" \
            >> "$LOGFILE" 2>&1 < /dev/null &
        pid=$!
    fi
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if answers; then
            log "engine B answers on $SOCK"
            return 0
        fi
        # setsid may have forked: dockerd counts as gone once neither the
        # launched pid nor the pidfile's is alive for a second
        if alive "$pid" || dockerd_pid >/dev/null; then
            gone=0
        else
            gone=$((gone + 1))
            [ "$gone" -ge 5 ] && break
        fi
        sleep 0.2
    done
    log "engine B did not come up; tail of $LOGFILE:"
    tail -n 30 "$LOGFILE" >&2 || true
    return 1
}

cmd_up() {
    need_root
    if answers; then
        log "engine B is already up"
        warn_if_no_tcp
        print_exports
        return 0
    fi
    if [ -e /run/containerd/containerd.sock ]; then
        log "WARNING: /run/containerd/containerd.sock exists: dockerd would use that containerd instead of one of its own"
    fi
    ensure_net
    mkdir -p "$STATE" "$DATA"
    write_config
    ensure_tls
    start_dockerd
    print_exports
}

cmd_start() {
    need_root
    if [ ! -d "$DATA" ] || [ ! -f "$CONF" ]; then
        die "no state in $STATE: run up first"
    fi
    if answers; then
        log "engine B is already up"
        warn_if_no_tcp
        print_exports
        return 0
    fi
    ensure_net
    ensure_tls
    start_dockerd
    print_exports
}

cmd_stop() {
    local i
    need_root
    if [ -z "$(engine_pids)" ]; then
        log "engine B is not running"
    else
        log "killing engine B (SIGKILL)"
        kill_engine
    fi
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        answers || break
        sleep 0.2
    done
    answers && die "engine B still answers after the kill"
    unmount_all || die "could not unmount everything under $STATE"
    remove_cgroups
    # what a reboot would lose: /run (exec root, socket, pidfile)
    if [ -d "$EXEC" ]; then
        rm -rf --one-file-system "$EXEC"
    fi
    rm -f "$SOCK" "$PIDFILE"
    log "engine B stopped; data kept in $DATA"
}

cmd_down() {
    need_root
    if [ -n "$(engine_pids)" ] || answers; then
        cmd_stop
    fi
    unmount_all || die "could not unmount everything under $STATE"
    remove_cgroups
    if [ -d "$STATE" ]; then
        rm -rf --one-file-system "$STATE"
        [ ! -e "$STATE" ] || die "could not remove $STATE"
    fi
    if [ -d "$EXEC" ]; then
        rm -rf --one-file-system "$EXEC"
    fi
    rm -f "$SOCK"
    delete_net
    log "engine B is down"
}

cmd_status() {
    if answers; then
        log "engine B answers on $SOCK"
        return 0
    fi
    log "engine B does not answer on $SOCK"
    return 1
}

cmd_load() {
    local img a b
    [ $# -gt 0 ] || die "usage: $0 load IMAGE..."
    answers || die "engine B is not up"
    for img in "$@"; do
        a="$(docker image inspect -f '{{.Id}}' "$img")" || die "first engine has no image $img"
        b="$(dockerb image inspect -f '{{.Id}}' "$img" 2>/dev/null || true)"
        if [ "$a" = "$b" ]; then
            log "$img: engine B has it ($a)"
            continue
        fi
        log "$img: copying to engine B"
        docker save "$img" | dockerb load >&2
        b="$(dockerb image inspect -f '{{.Id}}' "$img" 2>/dev/null || true)"
        [ "$a" = "$b" ] || die "$img: engine B has $b after the load, not $a"
    done
}

cmd_nsexec() {
    [ $# -gt 0 ] || die "usage: $0 nsexec CMD..."
    netns_ok || die "no netns $NETNS: run up first"
    DOCKER_HOST="$HOST" exec nsenter --net="$NETNS" -- "$@"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -gt 0 ] || usage
sub="$1"; shift
case "$sub" in
    up) cmd_up ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    down) cmd_down ;;
    status) cmd_status ;;
    load) cmd_load "$@" ;;
    nsexec) cmd_nsexec "$@" ;;
    -h|--help|help) usage ;;
    *) log "unknown subcommand: $sub"; usage ;;
esac
