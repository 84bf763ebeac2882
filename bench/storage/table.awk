# The summary table of bench/storage/run.sh: one block per connection count, one row
# per target, each figure the median over the rounds, with throughput and p99 as ratios
# to Redis everysec and always. Input: the key=value lines of run.sh (the client's line
# plus round, server CPU and records per fsync).
function median(list,    n, v, i, j, t) {
    n = split(list, v, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) {
        t = v[i] + 0
        for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]
        v[j + 1] = t
    }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
function add(arr, key, val) {
    if (val != "" && val != "-") arr[key] = arr[key] " " val
}
{
    delete kv
    for (i = 1; i <= NF; i++) {
        eq = index($i, "=")
        if (eq) kv[substr($i, 1, eq - 1)] = substr($i, eq + 1)
    }
    c = kv["conns"]; t = kv["label"]
    if (!(c in seen)) { seen[c] = 1; order[++nc] = c }
    key = c SUBSEP t
    if (!(key in runs)) rows[c] = rows[c] " " t
    runs[key]++
    add(rate, key, kv["per_s"]); add(p50, key, kv["p50_us"]); add(p99, key, kv["p99_us"])
    add(cpu, key, kv["server_cpu_us_per_publish"]); add(fs, key, kv["records_per_fsync"])
    err[key] += kv["errors"] + kv["broken"]
}
function ratio(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "-" }
function num(x, scale, fmt) { return x == "" ? "-" : sprintf(fmt, x / scale) }
END {
    for (k = 1; k <= nc; k++) {
        c = order[k]
        printf "\n%d connections\n", c
        printf "%-16s %12s %8s %8s %10s %9s %13s %11s %12s\n", "target", "publishes/s", "p50 ms",
               "p99 ms", "cpu us/pub", "rec/fsync", "rate/everysec", "rate/always", "p99/everysec"
        ev = c SUBSEP "redis-everysec"; al = c SUBSEP "redis-always"
        r_ev = median(rate[ev]); r_al = median(rate[al]); q_ev = median(p99[ev])
        n = split(rows[c], ts, " ")
        for (i = 1; i <= n; i++) {
            key = c SUBSEP ts[i]
            r = median(rate[key]); q = median(p99[key])
            printf "%-16s %12s %8s %8s %10s %9s %13s %11s %12s%s\n", ts[i], num(r, 1, "%.0f"),
                   num(median(p50[key]), 1000, "%.2f"), num(q, 1000, "%.2f"),
                   num(median(cpu[key]), 1, "%.1f"), num(median(fs[key]), 1, "%.1f"),
                   ratio(r, r_ev), ratio(r, r_al), ratio(q, q_ev),
                   (err[key] > 0 ? "  (errors: " err[key] ")" : "")
        }
    }
}
