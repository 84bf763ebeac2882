# The summary table of bench/run.sh, from sb_loadgen's key=value lines (each prefixed
# by run.sh with case= and run=). Medians over repeated runs; ratios Switchboard/peer.
# usage: awk -f bench/summary.awk bench/results/<date>.kv

# Which figures each case is read by, and in which direction a figure is better.
function metrics(c) {
    if (c ~ /^idle/) return "rss_per_conn_b:lower established:higher dropped:lower"
    if (c ~ /-max$/) return "max_rate_full_delivery:higher p99_ms_at_max:lower"
    if (c ~ /^fanout/)
        return "delivered_per_s:higher pub_per_s:higher loss_pct:lower p50_ms:lower " \
               "p99_ms:lower server_us_per_delivery:lower gen_cpu_pct:info others_cpu_s:info"
    if (c ~ /^rooms/)
        return "delivered_per_s:higher loss_pct:lower misdelivered:lower p99_ms:lower " \
               "server_us_per_delivery:lower"
    if (c ~ /^publish/) return "pub_per_s:higher rsp_p99_ms:lower server_us_per_publish:lower"
    if (c ~ /^storm/) return "connect_s:lower failed:lower connect_p99_ms:lower"
    if (c ~ /^callgrind/) return "ir_per_delivery:lower"
    return ""
}

function median(s,    a, n, i, j, x) {
    n = split(s, a, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) {
        x = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]
        a[j + 1] = x
    }
    return (n % 2) ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
}

function fmt(v) {
    if (v == "") return "-"
    if (v < 0) return "n/a"
    if (v >= 100 || v == int(v)) return sprintf("%.0f", v)
    if (v >= 1) return sprintf("%.2f", v)
    return sprintf("%.3f", v)
}

{
    delete kv
    for (i = 1; i <= NF; i++) {
        eq = index($i, "=")
        if (eq > 0) kv[substr($i, 1, eq - 1)] = substr($i, eq + 1)
    }
    c = kv["case"]
    col = kv["target"]
    if (col ~ /^node/) { peer_node[c] = col; col = "node" }
    if (!(c in seen)) { seen[c] = 1; order[++ncases] = c }
    if (c ~ /-max$/) {
        # The highest rung of the ladder with nothing lost and p99 within bounds.
        k = c SUBSEP col SUBSEP kv["run"]
        if (!(k in best)) { best[k] = 0; bestp99[k] = "" }
        if (kv["lost"] + 0 == 0 && kv["skipped"] + 0 == 0 && kv["pub_errors"] + 0 == 0 &&
            kv["established"] + 0 > 0 && kv["rate"] + 0 > best[k]) {
            best[k] = kv["rate"] + 0
            bestp99[k] = kv["p99_ms"] + 0
        }
        next
    }
    n = split(metrics(c), ms, " ")
    for (i = 1; i <= n; i++) {
        split(ms[i], p, ":")
        if (p[1] in kv) vals[c, col, p[1]] = vals[c, col, p[1]] " " kv[p[1]]
    }
}

END {
    for (k in best) {
        split(k, p, SUBSEP)
        vals[p[1], p[2], "max_rate_full_delivery"] = vals[p[1], p[2], "max_rate_full_delivery"] " " best[k]
        if (bestp99[k] != "")
            vals[p[1], p[2], "p99_ms_at_max"] = vals[p[1], p[2], "p99_ms_at_max"] " " bestp99[k]
    }
    printf "%-16s %-26s %12s %12s %12s %9s %9s\n", "case", "metric", "switchboard", "nchan",
           "node", "sb/nchan", "sb/node"
    for (ci = 1; ci <= ncases; ci++) {
        c = order[ci]
        n = split(metrics(c), ms, " ")
        for (i = 1; i <= n; i++) {
            split(ms[i], p, ":")
            m = p[1]
            sb = median(vals[c, "switchboard", m])
            nc = median(vals[c, "nchan", m])
            nd = median(vals[c, "node", m])
            r1 = (sb != "" && nc != "" && nc + 0 > 0 && sb + 0 >= 0) ? sprintf("%.2f", sb / nc) : "-"
            r2 = (sb != "" && nd != "" && nd + 0 > 0 && sb + 0 >= 0) ? sprintf("%.2f", sb / nd) : "-"
            printf "%-16s %-26s %12s %12s %12s %9s %9s\n", (i == 1 ? c : ""),
                   m " (" p[2] ")", fmt(sb), fmt(nc), fmt(nd), r1, r2
        }
        if (c in peer_node) printf "%-16s %-26s node = %s\n", "", "", peer_node[c]
    }

    # The targets of issue 9, read from the same medians.
    print ""
    print "# Targets of issue 9 (this run" (quick ? "; BENCH_QUICK: smaller counts, indicative only" : "") ")"
    v = med("fanout-1k-1000", "switchboard", "loss_pct"); q99 = med("fanout-1k-1000", "switchboard", "p99_ms")
    target("fan-out 1k x 1,000/s: 100% delivered, p99 < 20 ms", v != "" && q99 != "",
           v == 0 && q99 < 20, sprintf("loss %s%%, p99 %s ms", fmt(v), fmt(q99)))
    a = med("fanout-cpu-100k", "switchboard", "server_us_per_delivery")
    b = med("fanout-cpu-100k", "nchan", "server_us_per_delivery")
    q99 = med("fanout-cpu-100k", "switchboard", "p99_ms")
    target("CPU/delivery at 100k/s <= nchan/2, p99 < 5 ms (1,000 x 100/s)", a != "" && b != "" && q99 != "",
           a <= b / 2 && q99 < 5, sprintf("%s vs nchan %s us, p99 %s ms", fmt(a), fmt(b), fmt(q99)))
    a = med("fanout-100-1000", "switchboard", "server_us_per_delivery")
    b = med("fanout-100-1000", "nchan", "server_us_per_delivery")
    q99 = med("fanout-100-1000", "switchboard", "p99_ms")
    target("CPU/delivery at 100k/s <= nchan/2, p99 < 5 ms (100 x 1,000/s)", a != "" && b != "" && q99 != "",
           a <= b / 2 && q99 < 5, sprintf("%s vs nchan %s us, p99 %s ms", fmt(a), fmt(b), fmt(q99)))
    q99 = med("fanout-10k", "switchboard", "p99_ms")
    target("10k subscribers x 10/s: p99 < 100 ms", q99 != "", q99 < 100, sprintf("p99 %s ms", fmt(q99)))
    a = med("idle-ws", "switchboard", "rss_per_conn_b"); b = med("idle-sse", "switchboard", "rss_per_conn_b")
    target("idle: <= 1 KiB RSS per connection (WS, SSE)", a != "" && b != "", a <= 1024 && b <= 1024,
           sprintf("WS %s B, SSE %s B", fmt(a), fmt(b)))
    ahead("rooms", "server_us_per_delivery", "lower")
    ahead("rooms", "delivered_per_s", "higher")
    ahead("rooms", "p99_ms", "lower")
    ahead("publish", "pub_per_s", "higher")
    ahead("publish-pipelined", "pub_per_s", "higher")
}

function med(c, col, m) { return median(vals[c, col, m]) }

function target(what, known, ok, detail) {
    # One line per target: MET, MISSED, or n/a when this run did not measure it.
    printf "  %-66s %-6s %s\n", what, (known ? (ok ? "MET" : "MISSED") : "n/a"), (known ? detail : "not measured")
}

# "Ahead of every peer in the same run" on one figure of one case.
function ahead(c, m, dir,    sb, nc, nd, ok, known, detail) {
    sb = med(c, "switchboard", m); nc = med(c, "nchan", m); nd = med(c, "node", m)
    known = sb != "" && (nc != "" || nd != "")
    ok = known
    # A tie on a throughput that every target met in full is not behind.
    if (nc != "") ok = ok && (dir == "lower" ? sb + 0 < nc + 0 : sb + 0 >= nc + 0)
    if (nd != "") ok = ok && (dir == "lower" ? sb + 0 < nd + 0 : sb + 0 >= nd + 0)
    detail = sprintf("%s %s vs nchan %s, node %s", m, fmt(sb), fmt(nc), fmt(nd))
    target(c ": ahead of every peer (" m ")", known, ok, detail)
}
