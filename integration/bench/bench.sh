#!/bin/bash
# integration/bench/bench.sh — filter-milter's performance measurements, written
# to docs/benchmarks.md. Run as root on Debian bookworm, from the repository
# (make bench). About 26 minutes on 2 CPUs. It installs what it needs with apt-get
# (libmilter-dev, opensmtpd-filter-dkimsign, rspamd,
# opensmtpd-filter-rspamd) and unpacks Postfix with
# `apt-get download postfix` + `dpkg -x` into its work directory (the
# Debian package conflicts with opensmtpd), creating the system user
# fmbench-pf and group fmbench-pd for it when missing.
#
#   1. Go benchmarks: gateway (whole messages on in-memory pipes), milter.
#   2. loadgen: filter-milter on its pipe vs the floor filter, with the
#      libmilter null milter on unix and inet sockets; a CPU profile of the
#      gateway in process; memory with 1,000 concurrent sessions.
#   3. End to end, acceptance only (smtpd's mda and mta paused, Postfix's
#      mail put on hold), smtp-source from the Postfix package the client.
#      Setups: A smtpd without filter; B with the floor filter; Br with the
#      floor filter registering filter-milter's report events too (smtpd's
#      cost of the report stream; B, Br and M's null milter give the limit of
#      a milter bridge); M filter-milter + null milter (every stage); Me
#      filter-milter + null milter asking for end of message only; Ku and Ki
#      filter-milter + opendkim (unix, inet); C filter-dkimsign; E Postfix
#      without milter; Pu Postfix + opendkim (unix).
#      rspamd (integration/bench/rspamd.sh): R is smtpd + filter-rspamd
#      (Debian's opensmtpd-filter-rspamd, HTTP to rspamd's normal worker), Rm
#      smtpd + filter-milter + rspamd's proxy worker in milter mode with
#      self_scan; each with its own rspamd (package rspamd) on the same
#      configuration, no DNS, HTTP or redis checks, and every run checked for
#      a scan per message (rspamd's log) and, for Rm, rspamd's headers.
#      Per-message counters for B, Br, M and Me (their own run, see
#      BENCH_COUNTERS; the filter and the milter each in a cgroup v2 group of
#      their own, so threads started later are counted too):
#        milter_write, milter_writev, milter_sendmsg  the milter's calls
#                        (perf tracepoints syscalls:sys_enter_*): libmilter
#                        writes each reply with one writev, so writev +
#                        sendmsg are the milter round trips; its write calls
#                        wake its own poll loop (worker pool pipe)
#        milter_syscalls, filter_syscalls  all system calls
#                        (perf raw_syscalls:sys_enter)
#        filter_syscr, filter_syscw  read and write calls from /proc/PID/io
#                        (a cross-check of filter_syscalls)
#        filter_vcsw     voluntary context switches summed over
#                        /proc/PID/task/*/status: each ends a sleep that a
#                        wake-up ends (threads alive at both ends of the run)
#        filter_threads0, filter_threads1  the filter's threads before, after
#      perf fields are 0 when perf cannot count per cgroup (the report says so).
#   4. With BENCH_BASELINE: the same tree's filter-milter against the one
#      built from that revision, in the same run, interleaved: loadgen (the
#      pipe harness, null milter) and end to end (setup Mo, the baseline
#      binary with its own null milter, next to M), 2 KB and 100 KB; the
#      report's first section gives new/old for each.
#
# Environment:
#   BENCH_OUT=FILE       the report (default docs/benchmarks.md in the repository)
#   BENCH_REPS=N         repetitions of each end-to-end and loadgen run (default 3)
#   BENCH_N2K=N          messages per 2 KB end-to-end run (default 3000)
#   BENCH_N100K=N        messages per 100 KB end-to-end run (default 800)
#   BENCH_GOTIME=D       -benchtime of the Go benchmarks (default 1s)
#   BENCH_MEM_SESSIONS=N sessions of the memory check (default 1000), BENCH_MEM_SIZE (default 10MB),
#   BENCH_MEM_MAXRSS=MiB where the memory check stops (default 1024)
#   BENCH_KEEP=1         keep the work directory (configs, logs, raw results)
#   BENCH_SKIP=a,b       skip parts: gobench, loadgen, profile, memory, e2e, compare
#   BENCH_BASELINE=REV   a git revision (commit, tag, branch) of filter-milter to
#                        measure against the current tree (part 4)
#   BENCH_COUNTERS=MODE  the per-message counters: extra (default: one more run per
#                        size for B Br M Me, not part of the timed medians, since
#                        perf's syscall tracepoints slow every system call on the
#                        machine), timed (in every timed run of those setups), off
#   BENCH_E2E_IDS="M Mo" the end-to-end setups to run (default all: A B Br M Me Ku Ki C E Pu R Rm,
#                        and Mo with BENCH_BASELINE). Old against new alone, quickly:
#     BENCH_BASELINE=main BENCH_SKIP=gobench,loadgen,profile,memory BENCH_E2E_IDS="M Mo" integration/bench/bench.sh
set -euo pipefail

if [ "$(id -u)" != 0 ]; then echo "bench.sh: run as root" >&2; exit 1; fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
REPS=${BENCH_REPS:-3}
N2K=${BENCH_N2K:-3000}
N100K=${BENCH_N100K:-800}
GOTIME=${BENCH_GOTIME:-1s}
MEM_SESSIONS=${BENCH_MEM_SESSIONS:-1000}
MEM_SIZE=${BENCH_MEM_SIZE:-10MB}
SKIP=",${BENCH_SKIP:-},"
BASELINE=${BENCH_BASELINE:-}
CTR_MODE=${BENCH_COUNTERS:-extra}
case $CTR_MODE in extra | timed | off) ;; *) echo "bench.sh: BENCH_COUNTERS is extra, timed or off" >&2; exit 1 ;; esac
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
export GOFLAGS=${GOFLAGS:-}

W=$(mktemp -d /tmp/fm-bench.XXXXXX)
chmod 755 "$W"
mkdir -p "$W"/{bin,run,logs,res,keys,cfg,spool}
chmod 777 "$W/run"
CG=/sys/fs/cgroup/cpuacct
# cgroup names are the run's own: two runs at once must not add up each
# other's CPU (or count each other's processes) in a group of the same name
CGP=fmbench_${W##*.}_
PIDS=()          # every daemon this script started, stopped by PID at the end
CGROUPS=()
UNI=/sys/fs/cgroup/unified # cgroup v2, for perf's per-cgroup counting (perf stat -G)
UCGROUPS=()
START_TS=$(date +%s)
CMDLINE="integration/bench/bench.sh $*"
log() { printf '%s %s\n' "$(date +%T)" "$*" | tee -a "$W/logs/bench.log" >&2; }
skip() { [[ "$SKIP" == *",$1,"* ]]; }

cleanup() {
	set +e
	for p in "${PFNS[@]:-}"; do
		[ -n "$p" ] && LD_LIBRARY_PATH=$PFROOT/usr/lib/postfix nsenter -t "${p%%:*}" -m \
			"$PFROOT/usr/sbin/postfix" -c "${p#*:}" stop >/dev/null 2>&1
	done
	for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
	# libmilter milters notice SIGTERM only every few seconds
	for _ in $(seq 30); do
		alive=0
		for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.2
	done
	for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
	sleep 0.3
	for c in "${CGROUPS[@]:-}"; do [ -n "$c" ] && rmdir "$CG/$c" 2>/dev/null; done
	# a filter process leaves with its smtpd, a moment after it
	for c in "${UCGROUPS[@]:-}"; do
		for _ in $(seq 20); do [ -z "$c" ] || rmdir "$UNI/$c" 2>/dev/null && break; sleep 0.1; done
	done
	if [ "${BENCH_KEEP:-}" = 1 ]; then log "work directory kept: $W"; else rm -rf "$W"; fi
}
PFNS=()
trap cleanup EXIT

# ---------------------------------------------------------------- setup
log "work directory $W"
need=()
dpkg -s libmilter-dev >/dev/null 2>&1 || need+=(libmilter-dev)
dpkg -s opensmtpd-filter-dkimsign >/dev/null 2>&1 || need+=(opensmtpd-filter-dkimsign)
for t in opendkim opendkim-tools opensmtpd rspamd opensmtpd-filter-rspamd; do dpkg -s $t >/dev/null 2>&1 || need+=($t); done
if [ ${#need[@]} -gt 0 ]; then
	log "apt-get install ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >"$W/logs/apt.log" 2>&1
fi
PFROOT=$W/postfix
mkdir -p "$PFROOT"
(cd "$W" && apt-get download postfix >"$W/logs/apt-download.log" 2>&1)
dpkg -x "$W"/postfix_*.deb "$PFROOT"
PFVER=$(basename "$W"/postfix_*.deb .deb | cut -d_ -f2)
getent group fmbench-pd >/dev/null || groupadd -r fmbench-pd
getent passwd fmbench-pf >/dev/null || useradd -r -M -d /nonexistent -s /usr/sbin/nologin fmbench-pf
SMTPSOURCE() { LD_LIBRARY_PATH=$PFROOT/usr/lib/postfix "$PFROOT/usr/sbin/smtp-source" "$@"; }

log "building filter-milter, floorfilter, loadgen, nullmilter"
(cd "$ROOT" && go build -buildvcs=false -o "$W/bin/filter-milter" ./cmd/filter-milter &&
	go build -buildvcs=false -o "$W/bin/floorfilter" ./integration/bench/floorfilter &&
	go build -buildvcs=false -o "$W/bin/loadgen" ./integration/bench/loadgen) >"$W/logs/build.log" 2>&1 ||
	{ cat "$W/logs/build.log" >&2; exit 1; }
cc -O2 -o "$W/bin/nullmilter" "$ROOT/integration/bench/nullmilter/nullmilter.c" -lmilter -lpthread
if [ -n "$BASELINE" ]; then
	# the baseline's sources from git (not the work tree), built with the
	# same Go and module cache as the current tree
	BASEREV=$(git -C "$ROOT" rev-parse --short "$BASELINE^{commit}")
	log "building the baseline filter-milter $BASELINE ($BASEREV)"
	mkdir -p "$W/baseline"
	git -C "$ROOT" archive "$BASEREV" | tar -x -C "$W/baseline"
	(cd "$W/baseline" && go build -buildvcs=false -o "$W/bin/filter-milter-old" ./cmd/filter-milter) >>"$W/logs/build.log" 2>&1 ||
		{ cat "$W/logs/build.log" >&2; exit 1; }
fi
chmod 755 "$W"/bin/*

# free TCP ports on 127.0.0.1, from 28700 up, from a random start: runs at
# once probe apart (a port probed free may be taken before its server binds)
NEXTPORT=$((28700 + RANDOM % 50 * 20))
freeport() { # freeport VAR: sets VAR (not in a subshell: NEXTPORT must advance)
	while ss -Hltn "sport = :$NEXTPORT" | grep . >/dev/null; do NEXTPORT=$((NEXTPORT + 1)); done
	printf -v "$1" %d "$NEXTPORT"
	NEXTPORT=$((NEXTPORT + 1))
}
cgroup() { # cgroup NAME: a cpuacct group for a process tree
	mkdir -p "$CG/${CGP}$1"
	CGROUPS+=("${CGP}$1")
}
cgusage() { cat "$CG/${CGP}$1/cpuacct.usage"; }
# incg NAME CMD...: run CMD in the background inside cgroup NAME; sets $BGPID
incg() {
	local g=$1
	shift
	sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG/${CGP}$g" "$@" &
	BGPID=$!
	disown "$BGPID" # no job notices when cleanup stops it
	PIDS+=("$BGPID")
}
waitsock() { # waitsock PATH|PORT
	for _ in $(seq 200); do
		case $1 in
		/*) [ -S "$1" ] && return 0 ;;
		*) ss -Hltn "sport = :$1" | grep -q . && return 0 ;;
		esac
		sleep 0.05
	done
	echo "bench.sh: $1 never appeared" >&2
	return 1
}

# ---------------------------------------------------------------- milters
# DKIM key for opendkim and filter-dkimsign
opendkim-genkey -b 2048 -d bench.example -s bench -D "$W/keys" >/dev/null 2>&1
cp "$W/keys/bench.private" "$W/keys/opendkim.key"
chown opendkim: "$W/keys/opendkim.key"
cp "$W/keys/bench.private" "$W/keys/dkimsign.key"
chown _dkimsign: "$W/keys/dkimsign.key"
chmod 600 "$W/keys/opendkim.key" "$W/keys/dkimsign.key"

start_null() { # start_null NAME SPEC [eom]
	cgroup "$1"
	incg "$1" "$W/bin/nullmilter" "$2" ${3:-} >"$W/logs/$1.log" 2>&1
	eval "PID_$1=$BGPID"
}
start_opendkim() { # start_opendkim NAME SOCKETSPEC
	cgroup "$1"
	cat >"$W/cfg/$1.conf" <<EOF
Syslog no
Background no
Mode s
Domain bench.example
Selector bench
KeyFile $W/keys/opendkim.key
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
InternalHosts 127.0.0.1
Socket $2
UserID opendkim:opendkim
UMask 000
RequireSafeKeys no
EOF
	incg "$1" opendkim -f -x "$W/cfg/$1.conf" >"$W/logs/$1.log" 2>&1
	eval "PID_$1=$BGPID"
}
freeport NULLI_PORT
freeport ODKI_PORT
start_null null_lg "unix:$W/run/null-lg.sock"
start_null null_lgi "inet:$NULLI_PORT@127.0.0.1"
start_null null_e2e "unix:$W/run/null-e2e.sock"
start_null null_eom "unix:$W/run/null-eom.sock" eom
if [ -n "$BASELINE" ]; then start_null null_e2e_old "unix:$W/run/null-e2e-old.sock"; fi
start_opendkim odk_u "local:$W/run/odk-u.sock"
start_opendkim odk_i "inet:$ODKI_PORT@127.0.0.1"
start_opendkim odk_pu "local:$W/run/odk-pu.sock"
for s in ${BASELINE:+"$W/run/null-e2e-old.sock"} "$W/run/null-lg.sock" "$W/run/null-e2e.sock" "$W/run/null-eom.sock" "$W/run/odk-u.sock" "$W/run/odk-pu.sock" "$NULLI_PORT" "$ODKI_PORT"; do waitsock "$s"; done

# ---------------------------------------------------------------- 1. Go benchmarks
if ! skip gobench; then
	log "Go benchmarks (-benchtime $GOTIME)"
	(cd "$ROOT" && go test -run XXX -bench . -benchmem -benchtime "$GOTIME" ./gateway ./milter) >"$W/res/gobench.txt" 2>&1 ||
		log "go test -bench failed: $(tail -5 "$W/res/gobench.txt")"
fi

# ---------------------------------------------------------------- 2. loadgen
LG() { "$W/bin/loadgen" -filter "$W/bin/filter-milter" -floor-filter "$W/bin/floorfilter" "$@"; }
lgrun() { # lgrun NAME ARGS...: one loadgen invocation, JSON into res/lg-NAME.json
	local name=$1
	shift
	log "loadgen $name: $*"
	if ! LG -json "$W/res/lg-$name.json" "$@" >"$W/res/lg-$name.txt" 2>&1; then
		log "loadgen $name failed: $(tail -3 "$W/res/lg-$name.txt")"
	fi
}
if ! skip loadgen; then
	lgrun 2k-unix -q -floor -reps "$REPS" -sessions 10 -messages 500 -size 2KB -milter "unix:$W/run/null-lg.sock" -milter-pid "$PID_null_lg"
	lgrun 100k-unix -q -floor -reps "$REPS" -sessions 10 -messages 50 -size 100KB -milter "unix:$W/run/null-lg.sock" -milter-pid "$PID_null_lg"
	lgrun 2k-inet -q -floor -reps "$REPS" -sessions 10 -messages 500 -size 2KB -milter "inet:127.0.0.1:$NULLI_PORT" -milter-pid "$PID_null_lgi"
	lgrun 100k-inet -q -floor -reps "$REPS" -sessions 10 -messages 50 -size 100KB -milter "inet:127.0.0.1:$NULLI_PORT" -milter-pid "$PID_null_lgi"
	lgrun 2k-unix-100s -q -floor -reps 1 -sessions 100 -messages 100 -size 2KB -milter "unix:$W/run/null-lg.sock" -milter-pid "$PID_null_lg"
	# the null milter asking for end of message only: one round trip per message
	lgrun 2k-unix-eom -q -floor -reps "$REPS" -sessions 10 -messages 500 -size 2KB -milter "unix:$W/run/null-eom.sock" -milter-pid "$PID_null_eom"
fi
if [ -n "$BASELINE" ] && ! skip compare; then
	# old and new alternate inside each loadgen invocation
	lgrun cmp-2k -q -reps "$REPS" -sessions 10 -messages 500 -size 2KB -baseline "$W/bin/filter-milter-old" -milter "unix:$W/run/null-lg.sock" -milter-pid "$PID_null_lg"
	lgrun cmp-100k -q -reps "$REPS" -sessions 10 -messages 50 -size 100KB -baseline "$W/bin/filter-milter-old" -milter "unix:$W/run/null-lg.sock" -milter-pid "$PID_null_lg"
fi
if ! skip profile; then
	lgrun prof-2k -inprocess -sessions 20 -messages 400 -size 2KB -milter "unix:$W/run/null-lg.sock" -cpuprofile "$W/res/cpu-2k.prof"
	lgrun prof-100k -inprocess -sessions 10 -messages 60 -size 100KB -milter "unix:$W/run/null-lg.sock" -cpuprofile "$W/res/cpu-100k.prof"
	for p in 2k 100k; do
		if [ -s "$W/res/cpu-$p.prof" ]; then
			go tool pprof -tagfocus side=filter -relative_percentages -top -nodecount 30 "$W/bin/loadgen" "$W/res/cpu-$p.prof" >"$W/res/pprof-$p-top.txt" 2>/dev/null || true
			go tool pprof -tagfocus side=filter -relative_percentages -top -cum -nodecount 400 "$W/bin/loadgen" "$W/res/cpu-$p.prof" >"$W/res/pprof-$p-cum.txt" 2>/dev/null || true
		fi
	done
fi
if ! skip memory; then
	lgrun mem-2k -sessions "$MEM_SESSIONS" -concurrency "$MEM_SESSIONS" -messages 5 -size 2KB -milter "unix:$W/run/null-lg.sock" -max-rss 4096 -timeout 5m
	# stopped at 1 GiB (or after 10 minutes): the peak comes at the end,
	# when the sessions read their spilled messages back for the milter
	# and smtpd, so the run must finish (the whole 10 GB takes 2 to 6
	# minutes here, with the machine's load)
	lgrun mem-big -sessions "$MEM_SESSIONS" -concurrency "$MEM_SESSIONS" -messages 1 -size "$MEM_SIZE" -milter "unix:$W/run/null-lg.sock" -max-rss "${BENCH_MEM_MAXRSS:-1024}" -timeout 10m
	df -h /tmp >"$W/res/df-tmp.txt" 2>&1 || true
fi

# ---------------------------------------------------------------- 3. end to end
# OpenSMTPD instances, each in its own mount namespace: tmpfs spool and
# /run (queue and control socket), a resolv.conf that answers from
# /etc/hosts first and fails at once otherwise (no resolver stalls).
# /var/spool/smtpd must exist on the host as a mount point (a fresh opensmtpd
# install may not have made it yet), as in integration/harness.
mkdir -p -m 0711 /var/spool/smtpd
cat >"$W/cfg/resolv.conf" <<EOF
lookup file bind
nameserver 127.0.0.9
options timeout:1 attempts:1
EOF
declare -A PORT NSPID KIND MILTERCG
start_smtpd() { # start_smtpd ID 'filter line or empty'
	local id=$1 filter=$2 port
	freeport port
	PORT[$id]=$port
	KIND[$id]=smtpd
	{
		echo "smtp limit max-mails 100000"
		if [ -n "$filter" ]; then
			echo "$filter"
			echo "listen on 127.0.0.1 port $port hostname mx.bench.example filter \"f\""
		else
			echo "listen on 127.0.0.1 port $port hostname mx.bench.example"
		fi
		# relayed to a port where nothing listens, but the mta is paused:
		# nothing is looked up or sent after acceptance
		echo "action \"hold\" relay host smtp://127.0.0.1:9"
		echo "match from any for any action \"hold\""
	} >"$W/cfg/smtpd-$id.conf"
	smtpd -n -f "$W/cfg/smtpd-$id.conf" >"$W/logs/smtpd-$id.check" 2>&1 ||
		{ cat "$W/logs/smtpd-$id.check" >&2; return 1; }
	cat >"$W/cfg/smtpd-$id.sh" <<EOF
#!/bin/sh
set -e
mount -t tmpfs -o mode=0711 tmpfs /var/spool/smtpd
mount -t tmpfs -o mode=0755 tmpfs /run
mount --bind '$W/cfg/resolv.conf' /etc/resolv.conf
exec /usr/sbin/smtpd -d -f '$W/cfg/smtpd-$id.conf'
EOF
	cgroup "srv_$id"
	incg "srv_$id" unshare --mount --propagation private /bin/sh "$W/cfg/smtpd-$id.sh" >"$W/logs/smtpd-$id.log" 2>&1
	NSPID[$id]=$BGPID
	waitsock "$port"
	for _ in $(seq 100); do nsenter -t "$BGPID" -m test -S /run/smtpd.sock && break; sleep 0.05; done
	nsenter -t "$BGPID" -m smtpctl pause mda >/dev/null
	nsenter -t "$BGPID" -m smtpctl pause mta >/dev/null
}
start_postfix() { # start_postfix ID 'smtpd_milters value'
	local id=$1 milters=$2 port d
	freeport port
	PORT[$id]=$port
	KIND[$id]=postfix
	d=$W/pf-$id
	mkdir -p "$d/conf" "$d/queue" "$d/data"
	chown fmbench-pf: "$d/data"
	cat >"$d/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
command_directory = $PFROOT/usr/sbin
daemon_directory = $PFROOT/usr/lib/postfix/sbin
meta_directory = $PFROOT/etc/postfix
shlib_directory = $PFROOT/usr/lib/postfix
mail_owner = fmbench-pf
setgid_group = fmbench-pd
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH=$PFROOT/usr/lib/postfix
maillog_file_prefixes = $W
maillog_file = $W/logs/postfix-$id.maillog
myhostname = mx.bench.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
relay_domains = bench.example
smtpd_recipient_restrictions = check_recipient_access inline:{ bench.example=HOLD }, permit_mynetworks, reject
smtpd_milters = $milters
milter_default_action = tempfail
milter_protocol = 6
biff = no
EOF
	cat >"$d/conf/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
	cgroup "srv_$id"
	incg "srv_$id" env "LD_LIBRARY_PATH=$PFROOT/usr/lib/postfix" unshare --mount --propagation private /bin/sh -c \
		"mount -t tmpfs -o mode=0755 tmpfs '$d/queue' && exec '$PFROOT/usr/sbin/postfix' -c '$d/conf' start-fg" \
		>"$W/logs/postfix-$id.out" 2>&1
	NSPID[$id]=$BGPID
	PFNS+=("$BGPID:$d/conf")
	waitsock "$port"
}
queued() { # queued ID: messages held
	if [ "${KIND[$1]}" = smtpd ]; then
		nsenter -t "${NSPID[$1]}" -m find /var/spool/smtpd/queue -name message | wc -l
	else
		nsenter -t "${NSPID[$1]}" -m find "$W/pf-$1/queue/hold" -type f | wc -l
	fi
}
onemsg() { # onemsg ID: one held message's text
	if [ "${KIND[$1]}" = smtpd ]; then
		nsenter -t "${NSPID[$1]}" -m sh -c 'f=$(find /var/spool/smtpd/queue -name message | head -1); cat "$f"'
	else
		nsenter -t "${NSPID[$1]}" -m sh -c "f=\$(find '$W/pf-$1/queue/hold' -type f | head -1); cat \"\$f\"" | tr -c '[:print:]\n\t' '\n'
	fi
}
# the rspamd setups R and Rm: start_rspamd_setups, rspamd_before, rspamd_after
. "$ROOT/integration/bench/rspamd.sh"
busyticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; } # all CPUs, 1/100 s
# filtercpu ID: CPU ticks (1/100 s) of the filter process of smtpd setup ID:
# the processes of its cgroup that are not smtpd itself.
filtercpu() {
	local t=0 p c
	[ "${KIND[$1]}" = smtpd ] || { echo 0; return; }
	for p in $(cat "$CG/${CGP}srv_$1/cgroup.procs" 2>/dev/null); do
		c=$(cat "/proc/$p/comm" 2>/dev/null) || continue
		case $c in smtpd | sh | unshare) continue ;; esac
		[ -r "/proc/$p/stat" ] || continue
		t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12+$13}')))
	done
	echo $t
}
overflows() { nstat -az TcpExtListenOverflows 2>/dev/null | awk '/TcpExtListenOverflows/{print $2; f=1} END{if(!f) print 0}'; }
purge() {
	if [ "${KIND[$1]}" = smtpd ]; then
		nsenter -t "${NSPID[$1]}" -m smtpctl remove all >/dev/null 2>&1 || true
	else
		LD_LIBRARY_PATH=$PFROOT/usr/lib/postfix nsenter -t "${NSPID[$1]}" -m \
			"$PFROOT/usr/sbin/postsuper" -c "$W/pf-$1/conf" -d ALL hold >/dev/null 2>&1 || true
	fi
	for _ in $(seq 100); do [ "$(queued "$1")" = 0 ] && return 0; sleep 0.05; done
}

# ---- per-message counters of the filter (and milter) of setups B Br M Me
# perf counts system calls per cgroup v2 group (perf stat -a -G): the
# filter process and the milter are moved into groups of their own after
# the warm-up, so threads they start later are counted too (perf stat -p
# would count only the threads alive when it attaches; libmilter starts a
# thread per connection). perf starts with its events disabled and is
# enabled and disabled through its control fifo around exactly the
# measured window.
declare -A FPID MPID
CTR_IDS=" B Br M Me "
PERF_WHY=""
perfcheck() { # sets PERF_WHY, empty when perf can count system calls per cgroup
	local out
	if ! command -v perf >/dev/null; then PERF_WHY="perf not installed"; return; fi
	if ! out=$(perf stat -x, -e raw_syscalls:sys_enter true 2>&1) || ! grep -q ',raw_syscalls:sys_enter,' <<<"$out"; then
		PERF_WHY="perf stat -e raw_syscalls:sys_enter fails: $(head -1 <<<"$out")"
		return
	fi
	if [ ! -w "$UNI/cgroup.procs" ]; then PERF_WHY="no cgroup v2 hierarchy at $UNI"; return; fi
	mkdir -p "$UNI/${CGP}perfcheck"
	if ! out=$(perf stat -x, -a -e raw_syscalls:sys_enter -G ${CGP}perfcheck true 2>&1) || ! grep -q ",${CGP}perfcheck," <<<"$out"; then
		PERF_WHY="perf stat -a -G fails: $(head -1 <<<"$out")"
	fi
	rmdir "$UNI/${CGP}perfcheck" 2>/dev/null || true
}
ucgroup() { # ucgroup NAME PID: move process PID (all its threads) into cgroup v2 group (this run's prefix)NAME
	mkdir -p "$UNI/${CGP}$1"
	UCGROUPS+=("${CGP}$1")
	echo "$2" >"$UNI/${CGP}$1/cgroup.procs"
}
filterpid() { # filterpid ID: the PID of smtpd setup ID's filter process
	local p c
	for p in $(cat "$CG/${CGP}srv_$1/cgroup.procs" 2>/dev/null); do
		c=$(cat "/proc/$p/comm" 2>/dev/null) || continue
		case $c in filter-milter | floorfilter) echo "$p" && return ;; esac
	done
}
procctr() { # procctr PID: "syscr syscw voluntary-switches threads" (threads alive now)
	local r w
	r=$(awk '/^syscr:/{print $2}' "/proc/$1/io" 2>/dev/null)
	w=$(awk '/^syscw:/{print $2}' "/proc/$1/io" 2>/dev/null)
	echo "${r:-0} ${w:-0} $(cat "/proc/$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches:/{v+=$2; n++} END{print v+0, n+0}')"
}
PERFPID="" PCTL="" PACK=""
perfctl() { # perfctl enable|disable: and wait for perf's ack
	echo "$1" >&"$PCTL"
	read -r -t 10 _ <&"$PACK" || log "perf: no ack to $1"
}
perfstart() { # perfstart ID FILE: perf on ID's filter (and milter) groups, enabled
	local id=$1 ev=raw_syscalls:sys_enter cg=${CGP}f_$1 e
	if [ -n "${MPID[$id]:-}" ]; then
		for e in raw_syscalls:sys_enter syscalls:sys_enter_write syscalls:sys_enter_writev syscalls:sys_enter_sendmsg; do
			ev+=",$e" cg+=",${CGP}m_$id"
		done
	fi
	rm -f "$W/run/perf.ctl" "$W/run/perf.ack"
	mkfifo "$W/run/perf.ctl" "$W/run/perf.ack"
	# read-write opens: they do not block if perf never opens its ends
	exec {PCTL}<>"$W/run/perf.ctl" {PACK}<>"$W/run/perf.ack"
	perf stat -x, -o "$2" -a -D -1 --control "fifo:$W/run/perf.ctl,$W/run/perf.ack" -e "$ev" -G "$cg" >>"$W/logs/perf.log" 2>&1 &
	PERFPID=$!
	perfctl enable
}
perfstop() { # and wait for perf to write its file
	perfctl disable
	kill -INT "$PERFPID" 2>/dev/null || true
	wait "$PERFPID" || true
	exec {PCTL}>&- {PACK}>&-
}
perfval() { # perfval FILE EVENT GROUP: a count of perf stat -x, output, 0 if none
	awk -F, -v e="$2" -v g="$3" '$3 == e && $4 == g { v = ($1 ~ /^[0-9]+$/) ? $1 : 0; f = 1 } END { print f ? v : 0 }' "$1" 2>/dev/null || echo 0
}

# e2erun ID SIZE COUNT REP: 2 smtp-source processes x 5 sessions, 20 ms
# apart (smtpd 6.8 listens with a backlog of 5), many messages per session.
# REP 0 is a counter run (BENCH_COUNTERS=extra), left out of the timed medians.
e2erun() {
	local id=$1 size=$2 count=$3 rep=$4 half err="" t0 t1 c0 c1 m0=0 m1=0 n sig="" o0 o1 b0 b1 f0 f1
	local ctr=0 pf="" p0=(0 0 0 0) p1=(0 0 0 0) mw=0 mwv=0 msm=0 msc=0 fsc=0
	half=$((count / 2))
	purge "$id"
	sleep 0.5
	local extra="" # rspamd_after's JSON fields
	rspamd_before "$id"
	if [ -n "${FPID[$id]:-}" ] && { [ "$CTR_MODE" = extra ] && [ "$rep" = 0 ] || [ "$CTR_MODE" = timed ]; }; then
		ctr=1
		read -r -a p0 <<<"$(procctr "${FPID[$id]}")"
		if [ -z "$PERF_WHY" ]; then
			pf=$W/res/perf-$id-$size-$rep.txt
			perfstart "$id" "$pf"
		fi
	fi
	c0=$(cgusage "srv_$id")
	[ -n "${MILTERCG[$id]:-}" ] && m0=$(cgusage "${MILTERCG[$id]}")
	o0=$(overflows)
	f0=$(filtercpu "$id")
	b0=$(busyticks)
	t0=$(date +%s%N)
	SMTPSOURCE -d -l "$size" -m "$half" -s 5 -f sender@bench.example -t rcpt@bench.example "127.0.0.1:${PORT[$id]}" >"$W/logs/src-$id-a" 2>&1 &
	local a=$!
	# the second client once the first one's five connections are up (at
	# most 100 ms): more than 5 connects at once overflow smtpd's listen
	# queue, and a dropped SYN costs a 1 s retransmit
	for _ in $(seq 20); do
		sleep 0.005
		kill -0 $a 2>/dev/null || break
		[ "$(ss -Htn state established "dport = :${PORT[$id]}" | wc -l)" -ge 5 ] && break
	done
	SMTPSOURCE -d -l "$size" -m "$half" -s 5 -f sender@bench.example -t rcpt@bench.example "127.0.0.1:${PORT[$id]}" >"$W/logs/src-$id-b" 2>&1 &
	local b=$!
	wait $a || err="smtp-source exited $?"
	wait $b || err="smtp-source exited $?"
	t1=$(date +%s%N)
	b1=$(busyticks)
	o1=$(overflows)
	sleep 0.2 # the last commit's trailing work (queue, log) is part of the cost
	c1=$(cgusage "srv_$id")
	f1=$(filtercpu "$id")
	[ -n "${MILTERCG[$id]:-}" ] && m1=$(cgusage "${MILTERCG[$id]}")
	if [ $ctr = 1 ]; then
		if [ -n "$pf" ]; then
			perfstop
			fsc=$(perfval "$pf" raw_syscalls:sys_enter "${CGP}f_$id")
			msc=$(perfval "$pf" raw_syscalls:sys_enter "${CGP}m_$id")
			mw=$(perfval "$pf" syscalls:sys_enter_write "${CGP}m_$id")
			mwv=$(perfval "$pf" syscalls:sys_enter_writev "${CGP}m_$id")
			msm=$(perfval "$pf" syscalls:sys_enter_sendmsg "${CGP}m_$id")
		fi
		read -r -a p1 <<<"$(procctr "${FPID[$id]}")"
	fi
	if [ -s "$W/logs/src-$id-a" ] || [ -s "$W/logs/src-$id-b" ]; then
		err="${err:+$err; }smtp-source: $(cat "$W/logs/src-$id-a" "$W/logs/src-$id-b" | head -2 | tr '\n' ' ')"
	fi
	n=$(queued "$id")
	[ "$n" = "$((2 * half))" ] || err="${err:+$err; }$n messages queued, want $((2 * half))"
	# grep reads everything (no -q): with pipefail an early exit would fail the pipe
	if [ "$(onemsg "$id" | grep -a -c 'DKIM-Signature: v=1')" != 0 ]; then sig=yes; else sig=no; fi
	rspamd_after "$id" "$((2 * half))"
	printf '{"id":"%s","size":%d,"count":%d,"rep":%d,"ns":%d,"srv_cpu_ns":%d,"milter_cpu_ns":%d,"filter_cpu_ns":%d,"machine_busy_ns":%d,"queued":%d,"dkim":"%s","overflows":%d,"error":"%s","ctr":%d,"milter_write":%d,"milter_writev":%d,"milter_sendmsg":%d,"milter_syscalls":%d,"filter_syscalls":%d,"filter_syscr":%d,"filter_syscw":%d,"filter_vcsw":%d,"filter_threads0":%d,"filter_threads1":%d%s}\n' \
		"$id" "$size" "$((2 * half))" "$rep" "$((t1 - t0))" "$((c1 - c0))" "$((m1 - m0))" "$(((f1 - f0) * 10000000))" "$(((b1 - b0) * 10000000))" "$n" "$sig" "$((o1 - o0))" "$(echo "$err" | tr -d '"\\')" \
		"$ctr" "$mw" "$mwv" "$msm" "$msc" "$fsc" "$((p1[0] - p0[0]))" "$((p1[1] - p0[1]))" "$((p1[2] - p0[2]))" "${p0[3]}" "${p1[3]}" "$extra" \
		>>"$W/res/e2e.jsonl"
	log "e2e $id ${size}B rep $rep: $((2 * half)) msgs in $(((t1 - t0) / 1000000)) ms, CPU srv $(((c1 - c0) / 1000000)) ms + milter $(((m1 - m0) / 1000000)) ms, queued $n, dkim $sig, listen overflows $((o1 - o0)) ${err:+ERROR $err}"
	if [ $ctr = 1 ]; then log "  counters $id: milter write $mw writev $mwv sendmsg $msm, milter syscalls $msc, filter syscalls $fsc, syscr $((p1[0] - p0[0])), syscw $((p1[1] - p0[1])), voluntary switches $((p1[2] - p0[2])), threads ${p0[3]} -> ${p1[3]}"; fi
}

if ! skip e2e; then
	log "end to end: starting the MTAs"
	FM=$W/bin/filter-milter
	IDS=(A B Br M Me ${BASELINE:+Mo} Ku Ki C E Pu R Rm)
	if [ -n "${BENCH_E2E_IDS:-}" ]; then read -r -a IDS <<<"$BENCH_E2E_IDS"; fi
	for id in "${IDS[@]}"; do
		case $id in A | B | Br | M | Me | Mo | Ku | Ki | C | E | Pu | R | Rm) ;; *) echo "bench.sh: unknown setup $id in BENCH_E2E_IDS" >&2; exit 1 ;; esac
	done
	want() { [[ " ${IDS[*]} " == *" $1 "* ]]; }
	# if, not &&: a start that fails must stop the script (set -e)
	if want A; then start_smtpd A ""; fi
	if want B; then start_smtpd B "filter \"f\" proc-exec \"$W/bin/floorfilter\""; fi
	if want M; then
		start_smtpd M "filter \"f\" proc-exec \"$FM -milter unix:$W/run/null-e2e.sock\""
		MILTERCG[M]=null_e2e MPID[M]=$PID_null_e2e
	fi
	# the limit of a milter bridge: the floor filter with filter-milter's report stream
	if want Br; then start_smtpd Br "filter \"f\" proc-exec \"$W/bin/floorfilter -reports\""; fi
	# the null milter asking for end of message only (one round trip per message)
	if want Me; then
		start_smtpd Me "filter \"f\" proc-exec \"$FM -milter unix:$W/run/null-eom.sock\""
		MILTERCG[Me]=null_eom MPID[Me]=$PID_null_eom
	fi
	if want Mo; then
		[ -n "$BASELINE" ] || { echo "bench.sh: setup Mo needs BENCH_BASELINE" >&2; exit 1; }
		start_smtpd Mo "filter \"f\" proc-exec \"$W/bin/filter-milter-old -milter unix:$W/run/null-e2e-old.sock\""
		MILTERCG[Mo]=null_e2e_old
	fi
	if want Ku; then
		start_smtpd Ku "filter \"f\" proc-exec \"$FM -milter unix:$W/run/odk-u.sock\""
		MILTERCG[Ku]=odk_u
	fi
	if want Ki; then
		start_smtpd Ki "filter \"f\" proc-exec \"$FM -milter inet:127.0.0.1:$ODKI_PORT\""
		MILTERCG[Ki]=odk_i
	fi
	if want C; then start_smtpd C "filter \"f\" proc-exec \"/usr/libexec/opensmtpd/filter-dkimsign -c relaxed/relaxed -d bench.example -s bench -k $W/keys/dkimsign.key\" user _dkimsign group _dkimsign"; fi
	if want E; then start_postfix E ""; fi
	if want Pu; then
		start_postfix Pu "unix:$W/run/odk-pu.sock"
		MILTERCG[Pu]=odk_pu
	fi
	if want R || want Rm; then start_rspamd_setups; fi
	# one warm-up message each (first connections, filter start-up)
	for id in "${IDS[@]}"; do SMTPSOURCE -l 2048 -m 2 -s 1 -f sender@bench.example -t rcpt@bench.example "127.0.0.1:${PORT[$id]}" >/dev/null 2>&1 || log "warm-up $id failed"; done
	# the counted filters and milters into cgroup v2 groups of their own (perf -G)
	if [ "$CTR_MODE" != off ]; then
		perfcheck
		[ -z "$PERF_WHY" ] || log "counters without perf: $PERF_WHY"
		for id in "${IDS[@]}"; do
			[[ "$CTR_IDS" == *" $id "* ]] || continue
			p=$(filterpid "$id")
			if [ -z "$p" ]; then log "counters: no filter process in setup $id" && continue; fi
			FPID[$id]=$p
			if [ -z "$PERF_WHY" ]; then
				ucgroup "f_$id" "$p"
				if [ -n "${MPID[$id]:-}" ]; then ucgroup "m_$id" "${MPID[$id]}"; fi
			fi
		done
	fi
	for rep in $(seq "$REPS"); do
		# rotate the order every repetition; sizes alternate
		n=${#IDS[@]}
		for i in $(seq 0 $((n - 1))); do
			id=${IDS[$(((i + rep - 1) % n))]}
			if [ $((rep % 2)) = 1 ]; then
				e2erun "$id" 2048 "$N2K" "$rep"
				e2erun "$id" 102400 "$N100K" "$rep"
			else
				e2erun "$id" 102400 "$N100K" "$rep"
				e2erun "$id" 2048 "$N2K" "$rep"
			fi
		done
	done
	if [ "$CTR_MODE" = extra ]; then
		for id in "${IDS[@]}"; do
			[ -n "${FPID[$id]:-}" ] || continue
			e2erun "$id" 2048 "$N2K" 0
			e2erun "$id" 102400 "$N100K" 0
		done
	fi
	for id in "${IDS[@]}"; do purge "$id"; done
	grep -h -i -E 'fatal|lost processor|panic|warn|error' "$W"/logs/smtpd-*.log "$W"/logs/postfix-*.maillog 2>/dev/null |
		grep -v -E 'not owned by|not set-gid|purge_task: opendir' | head -20 >"$W/res/e2e-log-trouble.txt" || true
fi

# ---------------------------------------------------------------- report
log "writing $OUT"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -v '^??' | wc -l || echo 0)
{
	echo "nproc=$(nproc)"
	echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "mem=$(free -m | awk '/^Mem:/{print $2}') MiB"
	echo "kernel=$(uname -r)"
	echo "debian=$(cat /etc/debian_version)"
	echo "go=$(go version | cut -d' ' -f3)"
	echo "opensmtpd=$(dpkg-query -W -f '${Version}' opensmtpd)"
	echo "opendkim=$(dpkg-query -W -f '${Version}' opendkim)"
	echo "libmilter=$(dpkg-query -W -f '${Version}' libmilter-dev)"
	echo "dkimsign=$(dpkg-query -W -f '${Version}' opensmtpd-filter-dkimsign)"
	echo "postfix=$PFVER"
	echo "counters_mode=$CTR_MODE"
	echo "counters_perf=${PERF_WHY:-ok}"
	echo "perf=$(perf stat -e instructions true 2>&1 | grep -E 'instructions' | sed 's/  */ /g' | head -1 || echo 'perf not installed')"
	echo "commit=$COMMIT"
	echo "baseline=${BASEREV:-}"
	echo "dirty=$DIRTY"
	echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
	echo "minutes=$((($(date +%s) - START_TS + 59) / 60))"
	echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "command=$CMDLINE"
	echo "settings=BENCH_REPS=$REPS BENCH_N2K=$N2K BENCH_N100K=$N100K BENCH_GOTIME=$GOTIME BENCH_MEM_SESSIONS=$MEM_SESSIONS BENCH_MEM_SIZE=$MEM_SIZE${BENCH_SKIP:+ BENCH_SKIP=$BENCH_SKIP}${BASELINE:+ BENCH_BASELINE=$BASELINE}${BENCH_E2E_IDS:+ BENCH_E2E_IDS=\"$BENCH_E2E_IDS\"}"
	echo "repsN=$REPS"
	echo "gotime=$GOTIME"
} >"$W/res/machine.txt"
"$W/bin/loadgen" -report "$W/res" -out "$OUT"
log "done in $((($(date +%s) - START_TS) / 60)) min $((($(date +%s) - START_TS) % 60)) s: $OUT"
