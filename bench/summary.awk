# The summary table of bench/run.sh, from sb_loadgen's key=value lines (each prefixed
# by run.sh with case= and run=). Medians over repeated runs; ratios Switchboard/peer.
# usage: awk -f bench/summary.awk bench/results/<date>.kv

# Which figures each case is read by, and in which direction a figure is better.
function metrics(c) {
    if (c ~ /^idle/) return "rss_per_conn_b:lower established:higher dropped:lower"
    if (c ~ /-max$/) return "max_rate_full_delivery:higher p99_ms_at_max:lower"
    if (c ~ /^fanout/)
        return "delivered_per_s:higher loss_pct:lower p50_ms:lower p99_ms:lower " \
               "server_us_per_delivery:lower gen_cpu_pct:info"
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
}
