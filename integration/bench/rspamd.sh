# integration/bench/rspamd.sh — the rspamd setups of bench.sh's end-to-end
# part, sourced by bench.sh (it uses W, CG, PIDS, cgroup, incg, freeport,
# waitsock, start_smtpd, want, onemsg, MILTERCG). Not a script of its own.
#
#   R   OpenSMTPD + filter-rspamd (Debian's opensmtpd-filter-rspamd, the
#       filter line protocol to rspamd's HTTP /checkv2) + rspamd's normal
#       worker.
#   Rm  OpenSMTPD + filter-milter + rspamd's proxy worker in milter mode
#       with self_scan (the proxy scans the message itself, no normal
#       worker behind it).
#
# Each setup has its own rspamd (own pid, db and log directories under
# $W/rspamd/NAME, own cpuacct cgroup, counted as the setup's milter CPU; the
# hyperscan cache, compiled once before either starts, is shared) and both
# read the same configuration: Debian's /etc/rspamd with $LOCAL_CONFDIR
# pointed at $W/rspamd/local, whose local.d turns off every module that
# asks DNS, HTTP or redis (the bench measures the bridges, not the
# network), sends DNS to 127.0.0.9 with a short timeout for anything left,
# raises the action thresholds so no message is rejected, greylisted or
# marked (acceptance only), and makes milter_headers add the same three
# headers in both setups. The dkim module stays: it verifies signatures,
# and the bench's messages have none. The only difference is the worker:
# "normal" for R, "rspamd_proxy" in milter mode with self_scan for Rm; both
# with the same count. Idle, an instance uses a few ms of CPU a second.
#
# Checks, every run (rspamd_after): rspamd's log has a task line for every
# message of the run (rspamd logs one line per scanned message,
# rspamd_task_write_log), none of them with a DNS request, and, for Rm, one
# queued message carries rspamd's X-Rspamd-Server header.

# workers of each instance: as many as CPUs, the same for the normal and the
# proxy worker
RSPAMD_WORKERS=$(nproc)

# rspamd_config: the shared configuration under $W/rspamd
rspamd_config() {
	local d=$W/rspamd m
	mkdir -p "$d/local/local.d" "$d/hs"
	chown _rspamd: "$d/hs"
	# modules that look up DNS (rbl, surbl, spf, dmarc, asn, hfilter,
	# mx_check, emails), fetch HTTP maps or feeds (phishing, multimap,
	# whitelist, mid, mime_types, rspamd_update, url_redirector), need redis
	# (ratelimit, greylist, neural, replies, reputation, history_redis,
	# url_redirector) or another server (dcc, fuzzy_check), or sign with keys
	# the bench does not have (dkim_signing, arc)
	for m in rbl surbl spf dmarc asn hfilter mx_check emails phishing multimap whitelist mid \
		mime_types rspamd_update url_redirector ratelimit greylist neural replies reputation \
		history_redis dcc fuzzy_check dkim_signing arc; do
		echo "enabled = false;" >"$d/local/local.d/$m.conf"
	done
	cat >"$d/local/local.d/options.inc" <<EOF
# fuzzy_check is one of the C modules listed here; it queries rspamd.com
filters = "chartable,dkim,regexp";
# one cache for every instance: rspamd_prime compiles it
hs_cache_dir = "$W/rspamd/hs/";
dns {
	nameserver = ["127.0.0.9:53"];
	timeout = 0.1s;
	retransmits = 1;
}
EOF
	# the bayes classifier stays configured but inactive: its backend is
	# redis, and no redis server is named (rspamd logs "cannot init backend
	# redis" at start and skips statistics for every message)
	# acceptance only: no score may reject, greylist (soft reject), add the
	# spam header or rewrite the subject, in either setup
	cat >"$d/local/local.d/actions.conf" <<EOF
reject = 10000;
add_header = 9999;
greylist = 9998;
EOF
	# the same headers for both; a message from 127.0.0.1 is "local" to
	# rspamd, which milter_headers skips by default
	cat >"$d/local/local.d/milter_headers.conf" <<EOF
use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id"];
skip_local = false;
skip_authenticated = false;
EOF
	# info, Debian's default, is also what writes the task line per message
	# that the check counts
	cat >"$d/local/local.d/logging.inc" <<EOF
level = "info";
EOF
}

# rspamd_conf NAME normal|proxy SOCKET: NAME's top configuration file, with
# one kind of worker: "normal" speaks HTTP (/checkv2), "proxy" the milter
# protocol and scans by itself (self_scan); the rest is Debian's
rspamd_conf() {
	local d=$W/rspamd/$1
	mkdir -p "$d/db" "$d/run" "$d/log"
	{
		echo ".include \"\$CONFDIR/common.conf\""
		echo "options {"
		echo "	pidfile = \"\$RUNDIR/rspamd.pid\";"
		echo "	.include \"\$CONFDIR/options.inc\""
		echo "	.include(try=true; priority=1,duplicate=merge) \"\$LOCAL_CONFDIR/local.d/options.inc\""
		echo "}"
		echo "logging {"
		echo "	type = \"file\";"
		echo "	filename = \"\$LOGDIR/rspamd.log\";"
		echo "	.include \"\$CONFDIR/logging.inc\""
		echo "	.include(try=true; priority=1,duplicate=merge) \"\$LOCAL_CONFDIR/local.d/logging.inc\""
		echo "}"
		if [ "$2" = normal ]; then
			echo "worker \"normal\" {"
			echo "	bind_socket = \"$3\";"
			echo "	mime = true;"
		else
			echo "worker \"rspamd_proxy\" {"
			echo "	bind_socket = \"$3\";"
			echo "	milter = yes;"
			# self_scan belongs to the default upstream: without one,
			# rspamd 3.4's proxy finds no "default" and drops the milter
			# connection at end of message
			echo "	upstream \"local\" {"
			echo "		default = yes;"
			echo "		self_scan = yes;"
			echo "	}"
			echo "	timeout = 120s;"
			echo "	discard_on_reject = false;"
			echo "	quarantine_on_reject = false;"
		fi
		echo "	count = $RSPAMD_WORKERS;"
		echo "}"
	} >"$d/rspamd.conf"
	chown -R _rspamd: "$d"
}
# rspamd_cmd NAME: RSPAMD_CMD, the command line of NAME's rspamd (foreground,
# as _rspamd)
rspamd_cmd() {
	local d=$W/rspamd/$1
	RSPAMD_CMD=(rspamd -f -u _rspamd -g _rspamd -c "$d/rspamd.conf" --var "LOCAL_CONFDIR=$W/rspamd/local"
		--var "DBDIR=$d/db" --var "RUNDIR=$d/run" --var "LOGDIR=$d/log")
}
# rspamd_wait NAME PID PATTERN: wait (5 minutes at most) for a line of
# NAME's log, while its rspamd (PID) lives
rspamd_wait() {
	local log=$W/rspamd/$1/log/rspamd.log n
	for _ in $(seq 1200); do
		n=$(grep -c -- "$3" "$log" 2>/dev/null || true) # nothing while the log is missing
		[ "${n:-0}" -gt 0 ] && return 0
		kill -0 "$2" 2>/dev/null || { echo "bench.sh: rspamd $1 exited: $(tail -3 "$log" 2>/dev/null)" >&2; return 1; }
		sleep 0.25
	done
	echo "bench.sh: no \"$3\" in $log after 5 minutes" >&2
	return 1
}

# rspamd_prime: compile the shared hyperscan cache once, with a throw-away
# instance of the same configuration (on a unix socket: no port to lose
# during its start-up), so that every measured instance loads the compiled
# regexps when it starts. Without it each instance starts on PCRE while its
# hs_helper compiles (about 30 s of CPU here), and only normal workers take
# the compiled database up afterwards: the proxy worker would keep PCRE.
rspamd_prime() {
	local p
	rspamd_conf prime normal "$W/rspamd/prime/run/normal.sock"
	rspamd_cmd prime
	"${RSPAMD_CMD[@]}" >"$W/logs/rspamd-prime.out" 2>&1 &
	p=$!
	PIDS+=("$p")
	rspamd_wait prime "$p" 'full hyperscan database of .* has been loaded'
	kill "$p"
	wait "$p" || true
}

# start_rspamd NAME normal|proxy: a measured rspamd instance in cgroup NAME,
# listening on 127.0.0.1:RSPAMD_PORT_NAME, started and ready (its main
# process loaded the primed hyperscan cache before forking the workers). A
# port found free can be taken by another program during the seconds rspamd
# takes to bind it: then again on another one.
start_rspamd() {
	local port log=$W/rspamd/$1/log/rspamd.log
	cgroup "$1"
	for _ in 1 2 3; do
		freeport port
		rspamd_conf "$1" "$2" "127.0.0.1:$port"
		rm -f "$log"
		rspamd_cmd "$1"
		incg "$1" "${RSPAMD_CMD[@]}" >"$W/logs/$1.out" 2>&1
		# a worker starts only once the socket is bound
		if rspamd_wait "$1" "$BGPID" 'rspamd_handle_child_fork: starting'; then
			grep -q 'full hyperscan database of .* has been loaded' "$log" ||
				{ echo "bench.sh: rspamd $1 started without the hyperscan cache" >&2; return 1; }
			printf -v "RSPAMD_PORT_$1" %d "$port"
			eval "PID_$1=$BGPID"
			return 0
		fi
		grep -q 'Address already in use' "$log" || return 1
	done
	return 1
}

# start_rspamd_setups: rspamd for the wanted ones of R and Rm, then their
# smtpd. RSPAMD_OF maps a setup to its rspamd instance.
declare -A RSPAMD_OF RSPAMD_LOGOFF
start_rspamd_setups() {
	rspamd_config
	rspamd_prime
	if want R; then
		start_rspamd rsp_r normal
		start_smtpd R "filter \"f\" proc-exec \"/usr/libexec/opensmtpd/filter-rspamd -url http://127.0.0.1:$RSPAMD_PORT_rsp_r\""
		MILTERCG[R]=rsp_r
		RSPAMD_OF[R]=rsp_r
	fi
	if want Rm; then
		start_rspamd rsp_rm proxy
		start_smtpd Rm "filter \"f\" proc-exec \"$FM -milter inet:127.0.0.1:$RSPAMD_PORT_rsp_rm\""
		MILTERCG[Rm]=rsp_rm
		RSPAMD_OF[Rm]=rsp_rm
	fi
}

# rspamd_tasks NAME [OFFSET]: task lines (one per scanned message) in NAME's
# log from byte OFFSET on
rspamd_tasks() {
	tail -c "+$((${2:-0} + 1))" "$W/rspamd/$1/log/rspamd.log" | grep -c 'rspamd_task_write_log' || true
}

# rspamd_before ID: where the log of ID's rspamd stands before a run
# (nothing for the other setups)
rspamd_before() {
	[ -n "${RSPAMD_OF[$1]:-}" ] || return 0
	RSPAMD_LOGOFF[$1]=$(stat -c %s "$W/rspamd/${RSPAMD_OF[$1]}/log/rspamd.log")
}

# rspamd_after ID SENT: the run's checks. Sets e2erun's err and extra (bash
# scoping: the caller's locals), extra being the JSON fields
# ,"rspamd_scanned":N,"rspamd_headers":"yes|no". A run fails if rspamd logged
# fewer task lines than the messages sent (the warm-up is before the
# offset), if a task made DNS requests, or, for Rm, if the queued message lacks X-Rspamd-Server. R's
# headers are recorded, not required: filter-rspamd 0.1.7 writes only the
# string-valued entries of rspamd's milter.add_headers (and ARC /
# Authentication-Results from the object form), and rspamd 3.4 sends
# X-Spamd-Result and the others as objects ({"order":..,"value":..}), so
# they never reach the message.
rspamd_after() {
	local id=$1 sent=$2 name=${RSPAMD_OF[$1]:-} scanned hdr dns
	[ -n "$name" ] || return 0
	# rspamd writes the task line after the reply: wait for the last ones
	for _ in $(seq 40); do
		scanned=$(rspamd_tasks "$name" "${RSPAMD_LOGOFF[$id]}")
		[ "$scanned" -ge "$sent" ] && break
		sleep 0.05
	done
	[ "$scanned" -ge "$sent" ] || err="${err:+$err; }rspamd scanned $scanned of $sent messages"
	# every module that asks DNS is off: a task that did anyway waited for
	# 127.0.0.9, and the run measured that
	dns=$(tail -c "+$((${RSPAMD_LOGOFF[$id]} + 1))" "$W/rspamd/$name/log/rspamd.log" | grep 'rspamd_task_write_log' | grep -c -v 'dns req: 0,' || true)
	[ "$dns" = 0 ] || err="${err:+$err; }$dns rspamd tasks made DNS requests"
	# grep reads everything (no -q): with pipefail an early exit would fail the pipe
	if [ "$(onemsg "$id" | grep -a -c '^X-Rspamd-Server:')" != 0 ]; then hdr=yes; else hdr=no; fi
	if [ "$id" = Rm ] && [ "$hdr" = no ]; then err="${err:+$err; }no X-Rspamd-Server header in a queued message"; fi
	extra=$(printf ',"rspamd_scanned":%d,"rspamd_headers":"%s"' "$scanned" "$hdr")
}
