#!/usr/bin/env bash
# utap benchmark: per-hit cost of tracing one function, side by side with the
# floor (a minimal libbpf counter) and bpftrace, and for the ptrace backend with
# ltrace and gdb's dprintf, in one run.
#
# Usually run through `sudo make bench`. Environment:
#   LOOP, FLOOR      built benchmark binaries (default .build/bench/{loop,floor})
#   UTAP             utap binary (default .build/release/utap; missing -> n/a)
#   BENCH_CALLS      calls per loop run (default 2000000)
#   BENCH_ROUNDS     interleaved rounds, the median is reported (default 3)
#   BENCH_THREADS    thread counts to run (default "1 2")
#   BENCH_TOOLS      rows to run (default "unprobed floor bpftrace utap utapcount floorpair
#                    utaplatency utapptrace utapptracestep ltrace ltracelibc gdb")
#   BENCH_PTRACE_CALLS  calls per run for the utap ptrace rows (default 200000)
#   BENCH_SLOW_CALLS    calls per run for the ltrace and gdb rows (default 20000)
#   BENCH_LAUNCH_TIMEOUT  seconds a launched tracer (ptrace rows) may take before
#                    it is killed (default: 120 + 5 ms per call)
#   BENCH_MD         markdown file to update (default BENCHMARKS.md; "" = none)
#   BENCH_LOGS       where per-run logs go (default .build/bench/logs)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

LOOP=$(realpath -m "${LOOP:-.build/bench/loop}")
FLOOR=$(realpath -m "${FLOOR:-.build/bench/floor}")
UTAP=${UTAP:-.build/release/utap}
CALLS=${BENCH_CALLS:-2000000}
ROUNDS=${BENCH_ROUNDS:-3}
THREADS=${BENCH_THREADS:-"1 2"}
TOOLS=${BENCH_TOOLS:-"unprobed floor bpftrace utap utapcount floorpair utaplatency utapptrace utapptracestep ltrace ltracelibc gdb"}
PTRACE_CALLS=${BENCH_PTRACE_CALLS:-200000}
SLOW_CALLS=${BENCH_SLOW_CALLS:-20000}
MD=${BENCH_MD-BENCHMARKS.md}
LOGS=$(realpath -m "${BENCH_LOGS:-.build/bench/logs}")

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

[[ $EUID -eq 0 ]] || die "needs root (sudo make bench)"
[[ -x $LOOP && -x $FLOOR ]] || die "build first: make bench (missing $LOOP or $FLOOR)"
command -v bpftool >/dev/null || die "bpftool not found"
[[ " $TOOLS " != *" bpftrace "* ]] || command -v bpftrace >/dev/null || die "bpftrace not found"
[[ " $TOOLS " != *" ltrace"* ]] || command -v ltrace >/dev/null || die "ltrace not found (apt-get install ltrace)"
[[ " $TOOLS " != *" gdb "* ]] || command -v gdb >/dev/null || die "gdb not found (apt-get install gdb)"

# Rows of the ptrace group: 1 thread, the tracer starts the loop itself
# (`TRACER -- loop N 1 [MODE]`), each compared with an unprobed loop of the
# same count and mode. The other rows run per thread count, attached
# system-wide to a waiting loop.
is_ptrace_row() { [[ $1 == utapptrace || $1 == utapptracestep || $1 == ltrace || $1 == ltracelibc || $1 == gdb ]]; }
pt_tools="" th_tools=""
for tool in $TOOLS; do
	if is_ptrace_row "$tool"; then pt_tools+="$tool "; else th_tools+="$tool "; fi
done
pt_calls() { [[ $1 == utapptrace* ]] && echo "$PTRACE_CALLS" || echo "$SLOW_CALLS"; }
pt_mode() { case $1 in utapptracestep) echo step ;; ltracelibc) echo libc ;; *) echo target ;; esac; }

# utap rows are optional: a missing binary gives "n/a" rows.
have_utap=0
if [[ " $TOOLS " == *" utap"* ]]; then
	if [[ -x $UTAP ]]; then
		UTAP=$(realpath "$UTAP")
		have_utap=1
	else
		note "no utap binary at $UTAP: utap rows will be n/a"
	fi
fi

# --- where the probes go ------------------------------------------------------
# File offset of a function: st_value - p_vaddr + p_offset of the PT_LOAD
# segment that contains it (uprobes are placed by file offset, not address).
file_offset() { # symbol
	local sym_vaddr
	sym_vaddr=$(readelf -sW "$LOOP" | awk -v s="$1" '$8 == s && $4 == "FUNC" { print $2; exit }')
	[[ -n $sym_vaddr ]] || die "$1 not found in $LOOP"
	readelf -lW "$LOOP" | awk -v sym=$((16#$sym_vaddr)) '
	$1 == "LOAD" {
		off = hex2num($2); va = hex2num($3); memsz = hex2num($6)
		if (sym >= va && sym < va + memsz) { printf "%d\n", sym - va + off; exit }
	}
	function hex2num(h,   n, i, c) {   # portable: mawk has no strtonum()
		n = 0; h = tolower(substr(h, 3))
		for (i = 1; i <= length(h); i++) {
			c = index("0123456789abcdef", substr(h, i, 1)) - 1
			n = n * 16 + c
		}
		return n
	}'
}
func_off=$(file_offset bench_target)
[[ -n $func_off ]] || die "no PT_LOAD segment holds bench_target"
# The comparison only means something if bench_target starts
# endbr64 (f3 0f 1e fa); push %rbp (55): +0 is single-stepped, +4 emulated.
prologue=$(od -An -tx1 -j "$func_off" -N5 "$LOOP" | tr -d ' \n')
[[ $prologue == f30f1efa55 ]] ||
	die "bench_target starts with $prologue, expected endbr64; push %rbp (f30f1efa55) — rebuild loop with clang -fcf-protection=full -fno-omit-frame-pointer"
floor_off=$((func_off + 4))
# The single-stepped site: bench_step starts endbr64; lea (%rdi,%rdi,2),%rax
# (48 8d 04 7f), an instruction a ptrace tracer cannot emulate.
if [[ " $pt_tools " == *" utapptracestep "* ]]; then
	step_off=$(file_offset bench_step)
	[[ -n $step_off ]] || die "no PT_LOAD segment holds bench_step"
	step_bytes=$(od -An -tx1 -j "$step_off" -N8 "$LOOP" | tr -d ' \n')
	[[ $step_bytes == f30f1efa488d047f ]] ||
		die "bench_step starts with $step_bytes, expected endbr64; lea (%rdi,%rdi,2),%rax (f30f1efa488d047f) — rebuild loop from bench/loop.c"
fi

# --- one measurement ----------------------------------------------------------
mkdir -p "$LOGS"
rm -f "$LOGS"/*
# Children not yet reaped; only these are killed on exit (a reaped pid may
# already belong to another process).
declare -A live=()
cleanup() {
	local p
	for p in "${!live[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
reap() { # pid -> its exit status
	local rc=0
	wait "$1" 2>/dev/null || rc=$?
	unset "live[$1]"
	return $rc
}
trap cleanup EXIT

# Wait until the tracer printed its "attached" line (if it has one) and the
# kernel shows a BPF uprobe on the loop binary. A line alone is not enough:
# bpftrace prints "Attaching 1 probe..." before attaching and can still fail.
wait_attached() { # pid log [regex]
	local pid=$1 log=$2 re=${3:-} i
	for ((i = 0; i < 600; i++)); do
		kill -0 "$pid" 2>/dev/null || return 1
		# (no `bpftool | grep -q`: with pipefail, grep's early exit
		# kills bpftool with SIGPIPE and the test fails)
		# floor and utap print their line once attached (utap's multi-links do
		# not show in `bpftool perf list`); bpftrace says "Attaching" before it
		# attaches, so for it only the kernel's view counts.
		if [[ -n $re ]] && grep -Eq "$re" "$log" 2>/dev/null; then
			return 0
		fi
		if [[ -z $re && $(bpftool perf list 2>/dev/null) == *"filename $LOOP "* ]]; then
			# the perf event shows up just before it is enabled
			sleep 0.2
			return 0
		fi
		sleep 0.05
	done
	return 1
}

# SIGINT, then give the tracer 60 s to drain and print its summary.
stop_tracer() { # pid
	local pid=$1 i
	kill -INT "$pid" 2>/dev/null || true
	for ((i = 0; i < 600; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	reap "$pid" || true
}

# Sets: r_elapsed (ns, empty on failure), r_delivered (events the tool saw, or
# empty), r_reported (loss the tool reported, or empty).
# Sets r_delivered and r_reported from utap's summary in LOG: the text line
# "utap: N events, M lost" on stderr (or the JSON summary record, should it land there).
read_utap_summary() {
	local summary
	summary=$(grep -Eo '[0-9]+ events, [0-9]+ lost|"events":[0-9]+,"lost":[0-9]+' "$1" |
		tail -n1 | tr -c '0-9\n' ' ' || true)
	if [[ -n $summary ]]; then
		read -r r_delivered r_reported <<<"$summary"
	else
		note "$2: utap printed no 'N events, M lost' summary on stderr"
	fi
}

measure() { # tool threads round
	local tool=$1 threads=$2 tag="$1.t$2.r$3"
	local go="$LOGS/$tag.go" lout="$LOGS/$tag.loop" tlog="$LOGS/$tag.tool"
	local lpid tpid="" apid="" ok=1 rc=0
	r_elapsed="" r_delivered="" r_reported=""
	rm -f "$go"

	# The loop waits for $go, so probes are in place before the clock starts.
	LOOP_GO=$go "$LOOP" "$CALLS" "$threads" >"$lout" 2>&1 &
	lpid=$!
	live[$lpid]=1

	# Background jobs of a script start with SIGINT ignored; env restores it.
	case $tool in
	unprobed) ;;
	floor | floorpair)
		# floorpair adds a uretprobe counter: the floor of an entry + return pair.
		env --default-signal=INT "$FLOOR" "$LOOP" "$floor_off" ${tool#floor} >"$tlog" 2>&1 &
		tpid=$!
		live[$tpid]=1
		wait_attached "$tpid" "$tlog" '^attached' || ok=0
		;;
	bpftrace)
		# bpftrace writes "Attaching", "Lost N events" and the printf lines
		# all to stdout: a filter counts the event lines and keeps the rest.
		rm -f "$LOGS/fifo" && mkfifo "$LOGS/fifo"
		awk '/^[0-9]+ -?[0-9]+ -?[0-9]+$/ { n++; next }
		     { print; fflush() }
		     END { print "event_lines=" n + 0 }' <"$LOGS/fifo" >"$tlog" &
		apid=$!
		live[$apid]=1
		env --default-signal=INT bpftrace -e \
			"uprobe:$LOOP:bench_target { printf(\"%d %d %d\\n\", pid, arg0, arg1); }" \
			>"$LOGS/fifo" 2>"$tlog.err" &
		tpid=$!
		live[$tpid]=1
		# (awk reads the fifo in blocks, so "Attaching" shows up late:
		# only the kernel's view is waited for)
		wait_attached "$tpid" "$tlog" || ok=0
		;;
	utap)
		env --default-signal=INT "$UTAP" trace --format json -o /dev/null \
			"$LOOP:bench_target a=arg0 b=arg1" >"$tlog.out" 2>"$tlog" &
		tpid=$!
		live[$tpid]=1
		wait_attached "$tpid" "$tlog" 'Tracing [0-9]+ probe' || ok=0
		;;
	utapcount | utaplatency)
		# Aggregated in BPF maps: nothing crosses to user space per hit.
		env --default-signal=INT "$UTAP" ${tool#utap} --format json -o "$tlog.out" \
			"$LOOP:bench_target" 2>"$tlog" &
		tpid=$!
		live[$tpid]=1
		wait_attached "$tpid" "$tlog" 'Tracing [0-9]+ probe' || ok=0
		;;
	esac

	if ((ok)); then
		touch "$go"
		reap "$lpid" || rc=$?
		((rc == 0)) || { note "$tag: loop exited $rc"; ok=0; }
	else
		note "$tag: $tool did not attach; see $tlog*"
		kill -KILL "$lpid" 2>/dev/null || true
		reap "$lpid" || true
	fi
	# A moment for the tracer's reader to catch up before it is stopped.
	if [[ -n $tpid ]]; then
		((ok)) && sleep 0.5
		stop_tracer "$tpid"
	fi
	[[ -z $apid ]] || reap "$apid" || true
	((ok)) || return 0

	r_elapsed=$(sed -n 's/^elapsed_ns=\([0-9]*\) .*/\1/p' "$lout")
	case $tool in
	floor) r_delivered=$(sed -n 's/^hits=//p' "$tlog") ;;
	floorpair) r_delivered=$(($(sed -n 's/^hits=//p' "$tlog") / 2)) ;;
	bpftrace)
		r_delivered=$(sed -n 's/^event_lines=//p' "$tlog")
		r_reported=$(awk '/^Lost [0-9]+ events/ { n += $2 } END { print n + 0 }' "$tlog")
		;;
	utap)
		read_utap_summary "$tlog" "$tag"
		;;
	utapcount | utaplatency)
		r_delivered=$(grep -Eo '"count":[0-9]+' "$tlog.out" | head -n1 | tr -cd '0-9' || true)
		[[ -n $r_delivered ]] || note "$tag: utap ${tool#utap} printed no count"
		;;
	esac
	[[ -n $r_elapsed ]] || note "$tag: no elapsed_ns from loop"
}

# The ptrace group: the tracer starts the loop and ends with it. Sets r_elapsed,
# r_delivered, r_reported like measure(), and r_refused (utap's error line) when
# utap refused to trace at all, e.g. "--backend ptrace ... not available in this
# build" or a site it cannot probe: such a row is n/a, not a failure.
measure_launch() { # tool round
	local tool=$1 calls mode tag lout tlog rc=0 limit fn args
	calls=$(pt_calls "$tool") mode=$(pt_mode "$tool")
	tag="$tool.r$2" lout="$LOGS/$tool.r$2.loop" tlog="$LOGS/$tool.r$2.tool"
	r_elapsed="" r_delivered="" r_reported="" r_refused=""
	limit=${BENCH_LAUNCH_TIMEOUT:-$((120 + calls / 200))}
	args=("$calls" 1)
	[[ $mode == target ]] || args+=("$mode")
	# (stdin from /dev/null everywhere: timeout puts the tracer in a process
	# group of its own, where gdb would stop on SIGTTOU taking a terminal.)
	case $tool in
	unprobed:*)
		tag="$tool.r$2" lout="$LOGS/unprobed.$calls.$mode.r$2.loop"
		timeout -k 10 "$limit" "$LOOP" "${args[@]}" </dev/null >"$lout" 2>&1 || rc=$?
		;;
	utapptrace | utapptracestep)
		fn=bench_target
		[[ $tool == utapptracestep ]] && fn=bench_step
		timeout -k 10 "$limit" "$UTAP" trace --backend ptrace --format json -o /dev/null \
			"$LOOP:$fn a=arg0 b=arg1" -- "$LOOP" "${args[@]}" </dev/null >"$lout" 2>"$tlog" || rc=$?
		;;
	ltrace | ltracelibc)
		# -f: the calls come from a thread the loop creates. -L -x: the function
		# in the main binary, no library calls; -e labs: the PLT call only.
		local sel=(-L -x bench_target)
		[[ $tool == ltracelibc ]] && sel=(-e labs)
		timeout -k 10 "$limit" ltrace -f "${sel[@]}" -o "$tlog.ev" -- "$LOOP" "${args[@]}" \
			</dev/null >"$lout" 2>"$tlog" || rc=$?
		;;
	gdb)
		# No debug info in loop: the arguments are read from their registers
		# (gdb puts the breakpoint after the prologue, where they are intact).
		# `run ARGS >FILE` keeps the loop's output apart from the dprintf lines.
		timeout -k 10 "$limit" gdb -nx -batch -ex 'set debuginfod enabled off' \
			-ex 'dprintf bench_target,"%ld %ld\n",$rdi,$rsi' \
			-ex "run ${args[*]} >'$lout'" "$LOOP" </dev/null >"$tlog.ev" 2>"$tlog" || rc=$?
		;;
	esac
	((rc != 124 && rc != 137)) || note "$tag: killed after $limit s (BENCH_LAUNCH_TIMEOUT)"
	r_elapsed=$(sed -n 's/^elapsed_ns=\([0-9]*\) .*/\1/p' "$lout" 2>/dev/null || true)
	if [[ -z $r_elapsed ]]; then
		if [[ $tool == utapptrace* ]] && ((rc != 124 && rc != 137)) &&
			! grep -Eq 'Tracing [0-9]+ probe' "$tlog" 2>/dev/null; then
			r_refused=$(grep -m1 'error' "$tlog" 2>/dev/null || true)
			r_refused=${r_refused:-exit status $rc, no output}
			note "$tag: utap refused: $r_refused"
		else
			note "$tag: no elapsed_ns from loop (exit status $rc); see $lout, $tlog*"
		fi
		return 0
	fi
	((rc == 0)) || note "$tag: exit status $rc"
	case $tool in
	utapptrace*)
		read_utap_summary "$tlog" "$tag"
		;;
	ltrace) r_delivered=$(grep -c 'bench_target(' "$tlog.ev" || true) ;;
	ltracelibc) r_delivered=$(grep -c 'labs(' "$tlog.ev" || true) ;;
	gdb) r_delivered=$(grep -cE '^-?[0-9]+ -?[0-9]+$' "$tlog.ev" || true) ;;
	esac
}

# --- run: rounds outermost, so every tool sees the same machine noise ---------
declare -A elapsed lost reported refused
failed=0
t_begin=$(date +%s)
note "loop=$LOOP bench_target file offset $func_off (+4 = $floor_off), $CALLS calls, $ROUNDS rounds"
[[ -z $pt_tools ]] || note "ptrace rows: $pt_tools(utap: $PTRACE_CALLS calls, ltrace/gdb: $SLOW_CALLS calls, 1 thread)"
# Unprobed loops the ptrace rows need, by count and mode: "unprobed:CALLS:MODE".
pt_bases=""
for tool in $pt_tools; do
	b="unprobed:$(pt_calls "$tool"):$(pt_mode "$tool")"
	[[ " $pt_bases " == *" $b "* ]] || pt_bases+="$b "
done
pt_base() { echo "unprobed:$(pt_calls "$1"):$(pt_mode "$1")"; }
secs() { awk -v e="$1" 'BEGIN{print e/1e9}'; }
# Files one round of KEY (r_* from measure/measure_launch) of CALLS calls; sets l to the
# events lost (empty for an unprobed row or when unknown). Returns 1 when it failed.
record_round() {
	local key=$1 calls=$2 probed=$3
	l=
	if [[ -z $r_elapsed ]]; then
		failed=1
		elapsed[$key]+="fail "
		return 1
	fi
	elapsed[$key]+="$r_elapsed "
	if ((probed)); then
		[[ -n $r_delivered ]] && l=$((calls - r_delivered))
		lost[$key]+="${l:-?} "
		reported[$key]+="${r_reported:-} "
	fi
}
for ((round = 1; round <= ROUNDS; round++)); do
	for threads in $THREADS; do
		[[ -n $th_tools ]] || break
		for tool in $th_tools; do
			[[ $tool == utap* ]] && ((!have_utap)) && continue
			t0=$(date +%s.%N)
			measure "$tool" "$threads" "$round"
			k="$tool:$threads"
			record_round "$k" "$CALLS" "$([[ $tool != unprobed ]] && echo 1 || echo 0)" || continue
			printf 'bench: round %d %-8s %d thread(s): %6.2f s loop, %s ns/call, lost %s%s (%.0f s)\n' \
				"$round" "$tool" "$threads" "$(awk -v e="$r_elapsed" 'BEGIN{print e/1e9}')" \
				"$(awk -v e="$r_elapsed" -v c="$CALLS" 'BEGIN{printf "%.0f", e/c}')" \
				"${l:--}" "${r_reported:+ (reported $r_reported)}" \
				"$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" >&2
		done
	done
	for tool in $pt_bases $pt_tools; do
		[[ $tool == utap* ]] && ((!have_utap)) && continue
		# utap refused (no ptrace backend in this build, ...): n/a, not retried
		[[ -n ${refused[$tool]:-} ]] && continue
		t0=$(date +%s.%N)
		measure_launch "$tool" "$round"
		if [[ -n $r_refused ]]; then
			refused[$tool]=$r_refused
			continue
		fi
		calls=${tool#unprobed:}
		calls=${calls%%:*}
		[[ $tool != unprobed:* ]] && calls=$(pt_calls "$tool")
		record_round "$tool" "$calls" "$([[ $tool != unprobed:* ]] && echo 1 || echo 0)" || continue
		printf 'bench: round %d %-22s %7d calls: %7.2f s loop, %s ns/call, lost %s%s (%.0f s)\n' \
			"$round" "$tool" "$calls" "$(secs "$r_elapsed")" \
			"$(awk -v e="$r_elapsed" -v c="$calls" 'BEGIN{printf "%.0f", e/c}')" \
			"${l:--}" "${r_reported:+ (reported $r_reported)}" \
			"$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" >&2
	done
done
t_total=$(($(date +%s) - t_begin))

# --- report -------------------------------------------------------------------
median() { # values... ("fail" entries make it fail)
	[[ " $* " == *" fail "* ]] && { echo fail; return; }
	printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END {
		if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
max_of() { printf '%s\n' "$@" | awk '$1 == "?" { q = 1; next } NR == 1 || $1 > m { m = $1 } END { print q ? "?" : m }'; }

label() {
	case $1 in
	unprobed) echo "unprobed" ;;
	floor) echo "floor: C libbpf per-CPU counter @ bench_target+4" ;;
	bpftrace) echo "bpftrace printf(pid, arg0, arg1) @ bench_target+0 (endbr64)" ;;
	utap) echo "utap trace --format json -o /dev/null, a=arg0 b=arg1" ;;
	utapcount) echo "utap count (in-kernel counter)" ;;
	floorpair) echo "floor pair: C libbpf counters on entry + uretprobe @ bench_target+4" ;;
	utaplatency) echo "utap latency (in-kernel histogram)" ;;
	utapptrace) echo "utap trace --backend ptrace --format json -o /dev/null, a=arg0 b=arg1" ;;
	utapptracestep) echo "utap trace --backend ptrace --format json -o /dev/null, a=arg0 b=arg1" ;;
	ltrace) echo "ltrace -f -L -x bench_target -o FILE" ;;
	ltracelibc) echo "ltrace -f -e labs -o FILE (loop calls labs)" ;;
	gdb) echo "gdb -batch, dprintf bench_target,\"%ld %ld\\n\",\$rdi,\$rsi" ;;
	esac
}
# Where the ptrace group's tools put their breakpoint.
site() {
	case $1 in
	utapptrace) echo "bench_target+4: push %rbp, emulated" ;;
	utapptracestep) echo "bench_step+4: lea, run out of line (stub + jump back)" ;;
	ltrace) echo "bench_target+0: endbr64" ;;
	ltracelibc) echo "labs@plt, and the return address" ;;
	gdb) echo "bench_target+8: after the prologue" ;;
	esac
}

table=$([[ -n $th_tools ]] && {
	echo "| tool | threads | median loop (ns) | overhead per hit (ns) | × floor | events lost (worst round) |"
	echo "|---|---:|---:|---:|---:|---:|"
	for threads in $THREADS; do
		base=$(median ${elapsed[unprobed:$threads]:-fail})
		fl=fail
		if [[ $base != fail ]] && [[ -n ${elapsed[floor:$threads]:-} ]]; then
			fm=$(median ${elapsed[floor:$threads]})
			[[ $fm != fail ]] && fl=$(awk -v p="$fm" -v b="$base" -v c="$CALLS" 'BEGIN{ printf "%.1f", (p - b) / c }')
		fi
		for tool in $th_tools; do
			k="$tool:$threads"
			if [[ $tool == utap* ]] && ((!have_utap)); then
				echo "| $(label "$tool") | $threads | n/a | n/a | n/a | n/a |"
				continue
			fi
			m=$(median ${elapsed[$k]:-fail})
			if [[ $tool == unprobed ]]; then
				echo "| $(label "$tool") | $threads | $m | — | — | — |"
				continue
			fi
			ph=n/a ratio=n/a
			if [[ $m != fail && $base != fail ]]; then
				ph=$(awk -v p="$m" -v b="$base" -v c="$CALLS" 'BEGIN{ printf "%.1f", (p - b) / c }')
				[[ $fl != fail ]] && ratio=$(awk -v a="$ph" -v f="$fl" 'BEGIN{ printf "%.2f", a / f }')
			fi
			lw=$(max_of ${lost[$k]:-?})
			if [[ $lw == "?" ]]; then
				lw="? (no count from the tool)"
			elif [[ $tool == bpftrace || $tool == utap ]]; then
				# the tool's own loss report, when it disagrees with the count
				rep=$(max_of ${reported[$k]:-} 0)
				[[ $rep == "$lw" ]] || lw="$lw (reported $rep)"
			fi
			echo "| $(label "$tool") | $threads | $m | $ph | $ratio | $lw |"
		done
	done
} || true)

# The ptrace group: each row against the unprobed loop of its own count and mode.
pt_per_hit() { # tool -> µs per hit, or "" when not measured
	local m b c
	[[ -n ${elapsed[$1]:-} ]] || return 0
	m=$(median ${elapsed[$1]}) b=$(median ${elapsed[$(pt_base "$1")]:-fail}) c=$(pt_calls "$1")
	[[ $m == fail || $b == fail ]] || awk -v p="$m" -v b="$b" -v c="$c" 'BEGIN{ printf "%.2f", (p - b) / c / 1000 }'
}
pt_table=$([[ -n $pt_tools ]] && {
	echo "| tool | probed site | calls | median loop (ns) | median unprobed loop (ns) | overhead per hit (µs) | events lost (worst round) |"
	echo "|---|---|---:|---:|---:|---:|---:|"
	for tool in $pt_tools; do
		c=$(pt_calls "$tool")
		if [[ $tool == utap* ]] && { ((!have_utap)) || [[ -n ${refused[$tool]:-} ]]; }; then
			echo "| $(label "$tool") | $(site "$tool") | $c | n/a | n/a | n/a | n/a |"
			continue
		fi
		m=$(median ${elapsed[$tool]:-fail})
		b=$(median ${elapsed[$(pt_base "$tool")]:-fail})
		ph=$(pt_per_hit "$tool")
		lw=$(max_of ${lost[$tool]:-?})
		if [[ $lw == "?" ]]; then
			lw="? (no count from the tool)"
		elif [[ $tool == utap* ]]; then
			rep=$(max_of ${reported[$tool]:-} 0)
			[[ $rep == "$lw" ]] || lw="$lw (reported $rep)"
		fi
		echo "| $(label "$tool") | $(site "$tool") | $c | $m | $b | ${ph:-n/a} | $lw |"
	done
	# why a utap row is n/a (once per distinct reason)
	declare -A why=()
	for tool in $pt_tools; do
		[[ $tool == utap* ]] || continue
		if ((!have_utap)); then
			why["no utap binary at $UTAP"]+="$tool "
		elif [[ -n ${refused[$tool]:-} ]]; then
			why["utap refused: \`${refused[$tool]}\`"]+="$tool "
		fi
	done
	for w in "${!why[@]}"; do
		echo
		echo "${why[$w]% } n/a: $w"
	done
} || true)

# Goals for the ptrace backend, against ltrace and gdb in this run.
pt_checks=$([[ -n $pt_tools ]] && {
	for u in utapptrace utapptracestep; do
		[[ " $pt_tools " == *" $u "* ]] || continue
		if [[ $u == utapptrace ]]; then what="emulated site" goal=0.1; else what="out-of-line site" goal=0.25; fi
		uh=$( ((have_utap)) && pt_per_hit "$u" || true)
		if [[ -z $uh ]]; then
			echo "- utap ptrace, $what: not measured${refused[$u]:+ (utap refused: \`${refused[$u]}\`)}"
			continue
		fi
		ul=$(max_of ${lost[$u]:-?})
		for o in ltrace ltracelibc gdb; do
			[[ " $pt_tools " == *" $o "* ]] || continue
			oh=$(pt_per_hit "$o")
			if [[ -z $oh ]]; then
				echo "- utap ptrace, $what / $o: $o not measured"
				continue
			fi
			case $o in
			ltrace) on="ltrace -x bench_target" ;;
			ltracelibc) on="ltrace -e labs" ;;
			gdb) on="gdb dprintf" ;;
			esac
			awk -v u="$uh" -v o="$oh" -v g="$goal" -v w="$what" -v n="$on" -v l="$ul" 'BEGIN{
				r = u / o
				printf "- utap ptrace, %s / %s = %.3f (%.2f µs / %.2f µs; goal ≤ %s), lost %s: %s\n",
					w, n, r, u, o, g, l, r <= g ? "met" : "NOT met" }'
		done
	done
} || true)

# Goals from the issue, as ratios measured side by side in this run.
checks=$(
	for threads in $THREADS; do
		base=$(median ${elapsed[unprobed:$threads]:-fail})
		per_hit() { local m; m=$(median ${elapsed[$1:$threads]:-fail}); [[ $m == fail || $base == fail ]] && echo "" ||
			awk -v p="$m" -v b="$base" -v c="$CALLS" 'BEGIN{ printf "%.1f", (p - b) / c }'; }
		u=$( ((have_utap)) && [[ -n ${elapsed[utap:$threads]:-} ]] && per_hit utap || true)
		f=$([[ -n ${elapsed[floor:$threads]:-} ]] && per_hit floor || true)
		b=$([[ -n ${elapsed[bpftrace:$threads]:-} ]] && per_hit bpftrace || true)
		[[ -n $u ]] || echo "- $threads thread(s): utap trace not measured"
		ul=$(max_of ${lost[utap:$threads]:-?})
		[[ -z $u || -z $f ]] || awk -v u="$u" -v f="$f" -v l="$ul" -v t="$threads" 'BEGIN{
			r = u / f; ok = (r <= 1.3 && l == "0")
			printf "- %s thread(s): utap / floor = %.2f (goal ≤ 1.3), lost %s (goal 0): %s\n", t, r, l, ok ? "met" : "NOT met" }'
		[[ -z $u || -z $b ]] || awk -v u="$u" -v b="$b" -v t="$threads" 'BEGIN{
			r = u / b
			printf "- %s thread(s): utap / bpftrace = %.3f (goal ≤ 0.1): %s\n", t, r, r <= 0.1 ? "met" : "NOT met" }'
		p=$([[ -n ${elapsed[floorpair:$threads]:-} ]] && per_hit floorpair || true)
		h=$([[ -n ${elapsed[utaplatency:$threads]:-} ]] && per_hit utaplatency || true)
		hl=$(max_of ${lost[utaplatency:$threads]:-?})
		[[ -z $h || -z $p ]] || awk -v h="$h" -v p="$p" -v l="$hl" -v t="$threads" 'BEGIN{
			r = h / p; ok = (r <= 1.2 && l == "0")
			printf "- %s thread(s): utap latency / floor pair = %.2f (goal ≤ 1.2), missed %s (goal 0): %s\n", t, r, l, ok ? "met" : "NOT met" }'
		c=$([[ -n ${elapsed[utapcount:$threads]:-} ]] && per_hit utapcount || true)
		cl=$(max_of ${lost[utapcount:$threads]:-?})
		[[ -z $c || -z $f ]] || awk -v c="$c" -v f="$f" -v l="$cl" -v t="$threads" 'BEGIN{
			r = c / f; ok = (r <= 1.1 && l == "0")
			printf "- %s thread(s): utap count / floor = %.2f (goal ≤ 1.1), missed %s (goal 0): %s\n", t, r, l, ok ? "met" : "NOT met" }'
	done
)

model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
section=$(
	cat <<EOF
Generated by \`sudo make bench\` on $(date -u '+%Y-%m-%d %H:%M UTC'); took ${t_total} s.

- Machine: $model, $(nproc) CPUs, kernel $(uname -r)
- Tools: $(bpftrace --version 2>/dev/null || echo "bpftrace n/a"), libbpf $(pkg-config --modversion libbpf 2>/dev/null || echo "?"), $(ltrace -V 2>/dev/null | head -n1 | sed 's/ version / /; s/\.$//' || true), $(gdb --version 2>/dev/null | head -n1 || true), utap $( ((have_utap)) && echo "$UTAP" || echo "n/a")
EOF
	if [[ -n $th_tools ]]; then
		cat <<EOF
- Loop: $CALLS calls of \`bench_target(i, thread)\` (endbr64; push %rbp at +4), median of $ROUNDS interleaved rounds
- Overhead per hit = (median probed loop − median unprobed loop) / $CALLS; with 2 threads the hits run in parallel, so this is wall time per hit and each thread pays about twice that

$table

Goals:
${checks:-- (utap not measured)}
EOF
	fi
	if [[ -n $pt_tools ]]; then
		cat <<EOF

### ptrace tracers (1 thread)

- Each tracer starts the loop itself (\`TRACER -- loop N 1 [MODE]\`); utap ptrace rows $PTRACE_CALLS calls, ltrace and gdb rows $SLOW_CALLS calls, median of $ROUNDS interleaved rounds
- Overhead per hit = (median probed loop − median unprobed loop of the same count and mode) / calls

$pt_table

Goals:
${pt_checks:-- (utap ptrace not measured)}
EOF
	fi
)

echo
echo "$section"

if [[ -n $MD ]]; then
	begin='<!-- bench:begin -->' end='<!-- bench:end -->'
	if [[ ! -f $MD ]] || ! grep -qF "$begin" "$MD"; then
		[[ -f $MD ]] || printf '# Benchmarks\n\nRun with `sudo make bench` (see bench/).\n' >"$MD"
		printf '\n%s\n%s\n' "$begin" "$end" >>"$MD"
	fi
	# Replace only what lies between the markers; the header is hand-written.
	tmp=$(mktemp)
	printf '%s\n' "$section" >"$tmp.sec"
	awk -v b="$begin" -v e="$end" -v sec="$tmp.sec" '
		$0 == b { print; while ((getline l < sec) > 0) print l; skip = 1; next }
		$0 == e { skip = 0 }
		!skip' "$MD" >"$tmp"
	cat "$tmp" >"$MD"
	rm -f "$tmp" "$tmp.sec"
	note "wrote results to $MD"
fi

exit $failed
