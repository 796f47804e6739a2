#!/usr/bin/env python3
"""Turns $BENCH_OUT/results.json (hack/bench/bench.py) into PNG plots (gnuplot, pngcairo) and
$BENCH_OUT/README.md: the headline tables, the targets met or missed, the plots, and the
command that reproduces them.

    report.py [DIR]   (default: $BENCH_OUT or docs/bench)

Parts missing from results.json are left out of the tables and plots. Hand-written analysis
of a run belongs in DIR/findings.md, which this script links and never writes.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RT_ORDER = ("usernsrs", "runc", "crun")
RT_NAME = {"usernsrs": "usernsrs", "runc": "runc shim + runc", "crun": "runc shim + crun"}
COLORS = {"usernsrs": "#1b9e77", "runc": "#d95f02", "crun": "#7570b3"}
PREP_COLORS = ["#1b9e77", "#66a61e", "#7570b3", "#d95f02", "#e7298a", "#666666"]
MiB = 1024.0


def fmt_ms(v):
    return "-" if v is None else (f"{v:.1f}" if v < 100 else f"{v:.0f}")


def human_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def setting_name(v):
    return f"containerd {v['flavor']}, {'userns' if v['userns'] else 'no userns'}"


class Plotter:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.tmp = tempfile.mkdtemp(prefix="bench-plot-")
        self.made = []

    def data(self, name, rows):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            for r in rows:
                f.write(" ".join(str(x) for x in r) + "\n")
        return path

    def plot(self, png, script, size="1000,560"):
        full = (f'set terminal pngcairo size {size} font "DejaVu Sans,10" noenhanced\n'
                f'set output "{os.path.join(self.out_dir, png)}"\n' + script)
        gp = os.path.join(self.tmp, png + ".gp")
        with open(gp, "w") as f:
            f.write(full)
        p = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"report.py: gnuplot failed for {png}:\n{p.stderr}")
        self.made.append(png)

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Target evaluation (the targets; reported, never asserted)


def targets(r):
    out = []
    if "start" in r:
        for flavor in ("2", "1.6"):
            v = next((x for x in r["start"]["variants"] if x["runtime"] == "usernsrs"
                      and x["flavor"] == flavor and x["userns"] and x.get("ratio_to_runc")), None)
            if v:
                ratio = v["ratio_to_runc"]["p50"]
                out.append((f"start p50 <= 0.7x runc, userns, containerd {flavor}",
                            f"{ratio:.2f}x ({fmt_ms(v['stats']['p50'])} ms)", ratio <= 0.7))
    if "prep" in r:
        spans = []
        for img in r["prep"]["images"]:
            for how, s in (img.get("strace") or {}).items():
                if s.get("span_ms_median") is not None:
                    spans.append((s["span_ms_median"], img["files"], img["layers"], how))
        if spans:
            worst = max(spans)
            out.append(("idmapped rootfs prep < 5 ms, flat across sizes",
                        f"max {worst[0]:.2f} ms (open_tree..mount under strace; "
                        f"{min(spans)[0]:.2f}-{worst[0]:.2f} ms over {len(spans)} image/flow pairs)",
                        worst[0] < 5.0))
        # Rootfs data only: the snapshotter's metadata.db (containerd's records) is reported
        # apart. The overlay flow is held against a container without a user namespace,
        # whose snapshot has the same empty upper and work directories.
        ok, worst, meta = True, None, []
        for img in r["prep"]["images"]:
            ref = img["variants"].get("runc-nouserns", {}).get("added_median")
            for key in ("usernsrs-idmap-overlay", "usernsrs-idmap-rootpath"):
                a = img["variants"].get(key, {}).get("added_median")
                if not a:
                    continue
                base = ref if key == "usernsrs-idmap-overlay" and ref else {
                    "inodes": 0, "allocated_bytes": 0}
                extra_i = a["inodes"] - base["inodes"]
                extra_b = a["allocated_bytes"] - base["allocated_bytes"]
                if a.get("metadata_allocated_bytes"):
                    meta.append(a["metadata_allocated_bytes"])
                if extra_i > 0 or extra_b > 0:
                    ok = False
                    worst = (img["files"], img["layers"], key, extra_i, extra_b)
        note = (f"; metadata.db grew by a median of up to {human_bytes(max(meta))} per container"
                if meta else "")
        out.append(("zero bytes/inodes added by the user namespace",
                    ("rootfs: none beyond the empty upper/work dirs a no-userns container also "
                     "gets (root.path: 0)" + note) if ok else
                    f"{worst[2]} f{worst[0]}-l{worst[1]}: +{worst[3]} inodes, "
                    f"+{human_bytes(worst[4])}{note}", ok))
    if "memory" in r:
        pts = r["memory"]["modes"]["per-container"]["points"]
        for p in (pts[0], pts[-1]) if len(pts) > 1 else pts:
            m = p["usernsrs"]["mean_pss_kib"]
            if m is not None:
                out.append((f"shim PSS < 3 MiB ({p['containers']} container(s), one shim each)",
                            f"{m / MiB:.2f} MiB per shim", m / MiB < 3.0))
    if "concurrency" in r:
        fails = sum(l["usernsrs"]["failures"] for l in r["concurrency"]["levels"])
        total = sum(l["usernsrs"]["starts"] for l in r["concurrency"]["levels"])
        out.append(("zero failures under concurrency", f"{fails} of {total} starts failed",
                    fails == 0))
    return out


# ---------------------------------------------------------------------------------------------
# Plots


def plot_start(pl, r):
    variants = r["start"]["variants"]
    settings = []
    for v in variants:
        s = setting_name(v)
        if s not in settings:
            settings.append(s)
    rows = []
    for s in settings:
        row = [f'"{s}"']
        for rt in RT_ORDER:
            v = next((x for x in variants if setting_name(x) == s and x["runtime"] == rt), None)
            st = v and v.get("stats")
            # 0, not "?": a missing value shifts the later whiskers of a gnuplot histogram.
            row += [st["p50"], st["p50"], st["p99"]] if st else [0, 0, 0]
        rows.append(row)
    dat = pl.data("start.dat", rows)
    plots = ", ".join(
        f'"{dat}" using {2 + 3 * i}:{3 + 3 * i}:{4 + 3 * i}:xtic(1) title "{RT_NAME[rt]}" '
        f'lc rgb "{COLORS[rt]}"' for i, rt in enumerate(RT_ORDER))
    notes = [f"{RT_NAME[v['runtime']]} on {setting_name(v)}: not runnable"
             for v in variants if not v["runnable"]]
    label = "\\n".join(notes)
    pl.plot("start_latency.png", f"""
set title "Start-to-exit latency of ctr run --rm /bin/true: bars p50, whiskers to p99 (N={r['start']['runs']} each, interleaved)"
set ylabel "ms"
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.8 border -1
set key outside top center horizontal
set grid ytics
set yrange [0:*]
set bmargin 5
set label 1 "{label}" at graph 0.99, graph 0.97 right font ",8"
plot {plots}
""")
    # CDFs of the runnable variants, one panel per containerd.
    blocks = []
    for flavor in ("2", "1.6"):
        lines = []
        for v in variants:
            if v["flavor"] != flavor or not v["samples_ms"]:
                continue
            xs = sorted(v["samples_ms"])
            name = f"{flavor}-{v['runtime']}-{'u' if v['userns'] else 'n'}.dat"
            path = pl.data(name, [(x, (i + 1) / len(xs)) for i, x in enumerate(xs)])
            dt = 1 if v["userns"] else 2
            lines.append(f'"{path}" using 1:2 with steps lw 2 dt {dt} lc rgb "{COLORS[v["runtime"]]}" '
                         f'title "{RT_NAME[v["runtime"]]}{", userns" if v["userns"] else ""}"')
        if lines:
            blocks.append(f'set title "containerd {variants[[x["flavor"] for x in variants].index(flavor)]["containerd"]}"\n'
                          f"plot {', '.join(lines)}\n")
    p99s = [v["stats"]["p99"] for v in variants if v.get("stats")]
    xmax = 1.3 * max(p99s) if p99s else 1000
    pl.plot("start_cdf.png", f"""
set multiplot layout 1,{len(blocks)} title "Start-to-exit latency, cumulative distribution (solid: user namespace, dashed: none; x cut at 1.3x the largest p99)"
set xrange [0:{xmax:.0f}]
set xlabel "ms"
set ylabel "fraction of runs"
set key bottom right font ",9"
set grid
set yrange [0:1]
{''.join(blocks)}unset multiplot
""", size="1200,500")


def plot_prep(pl, r):
    prep = r["prep"]
    variants = prep["variants"]
    images = prep["images"]
    layer_counts = sorted({i["layers"] for i in images})
    file_counts = sorted({i["files"] for i in images})
    # x axis A: files at the most common layer count; x axis B: layers at the most common files.
    main_layers = max(layer_counts, key=lambda l: sum(1 for i in images if i["layers"] == l))
    main_files = max(file_counts, key=lambda f: sum(1 for i in images if i["files"] == f))

    def series(select, xkey, val):
        out = {}
        for vi, v in enumerate(variants):
            rows = []
            for img in sorted((i for i in images if select(i)), key=lambda i: i[xkey]):
                y = val(img["variants"].get(v["key"], {}))
                if y is not None:
                    rows.append((img[xkey], y))
            out[v["key"]] = pl.data(f"prep-{xkey}-{val.__name__}-{vi}.dat", rows)
        return out

    def ttfl(v):
        return v.get("stats", {}) and v["stats"]["p50"] if v.get("stats") else None

    def alloc(v):
        a = v.get("added_median")
        return max(1, a["allocated_bytes"] / MiB) if a else None  # log axis: 0 drawn as 1 KiB

    def inodes(v):
        a = v.get("added_median")
        return max(1, a["inodes"]) if a else None

    def lines(files_map):
        # Distinct point types: some variants coincide (idmapped and no-userns add the same).
        return ", ".join(f'"{files_map[v["key"]]}" using 1:2 with linespoints lw 2 '
                         f'pt {(5, 7, 9, 11, 13, 4)[i % 6]} ps 1.3 '
                         f'lc rgb "{PREP_COLORS[i % len(PREP_COLORS)]}" title "{v["label"]}"'
                         for i, v in enumerate(variants))

    xr = f"[{min(file_counts) / 2:g}:{max(file_counts) * 2:g}]"
    a = series(lambda i: i["layers"] == main_layers, "files", ttfl)
    b = series(lambda i: i["files"] == main_files, "layers", ttfl)
    c = series(lambda i: i["layers"] == main_layers, "files", alloc)
    d = series(lambda i: i["layers"] == main_layers, "files", inodes)
    pl.plot("rootfs_prep.png", f"""
set multiplot layout 2,2 title "Rootfs preparation: ctr run (or c create) to the container's first line, and what each container adds on disk" margins 0.07,0.98,0.16,0.93 spacing 0.08,0.12
set grid
set logscale y
set key at screen 0.5, screen 0.01 center bottom horizontal maxcols 2 maxrows 3 font ",9"
set title "time to first line, {main_layers} layers (p50)"
set xlabel "files in the image"
set ylabel "ms"
set logscale x
set xrange {xr}
plot {lines(a)}
unset logscale x
set title "time to first line, {main_files} files (p50)"
set xlabel "layers"
set ylabel "ms"
unset logscale x
set xrange [0:*]
set key off
plot {lines(b)}
set logscale x
set xrange {xr}
set title "disk allocated per container, {main_layers} layers (0 drawn as 1 KiB)"
set xlabel "files in the image"
set ylabel "KiB"
plot {lines(c)}
set title "inodes per container, {main_layers} layers (0 drawn as 1)"
set ylabel "inodes"
plot {lines(d)}
unset multiplot
""", size="1300,900")


def plot_memory(pl, r):
    mem = r["memory"]
    lines_total, lines_mean = [], []
    for mode, dt in (("per-container", 1), ("grouped", 2)):
        pts = mem["modes"][mode]["points"]
        for rt in ("usernsrs", "runc"):
            path = pl.data(f"mem-{mode}-{rt}.dat",
                           [(p["containers"], p[rt]["total_pss_kib"] / MiB,
                             (p[rt]["mean_pss_kib"] or 0) / MiB, p[rt]["total_rss_kib"] / MiB)
                            for p in pts])
            t = f"{RT_NAME[rt]}, {mode}"
            lines_total.append(f'"{path}" using 1:2 with linespoints lw 2 pt 7 dt {dt} '
                               f'lc rgb "{COLORS[rt]}" title "{t}"')
            lines_mean.append(f'"{path}" using 1:3 with linespoints lw 2 pt 7 dt {dt} '
                              f'lc rgb "{COLORS[rt]}" title "{t}"')
    pl.plot("memory.png", f"""
set multiplot layout 1,2 title "Shim memory with N running sleep containers (user namespace, containerd {mem['containerd']})"
set grid
set key top left font ",9"
set xlabel "running containers per runtime"
set logscale x
set xrange [0.8:{max(mem['counts']) * 1.3:g}]
set yrange [0:*]
set title "total PSS of the shim processes"
set ylabel "MiB"
plot {', '.join(lines_total)}
set title "PSS per shim process (mean)"
set arrow 1 from graph 0, first 3 to graph 1, first 3 nohead dt 3 lc rgb "black"
set label 2 "target 3 MiB" at graph 0.02, first 3.3 font ",8"
plot {', '.join(lines_mean)}
unset multiplot
""", size="1200,500")


def plot_concurrency(pl, r):
    conc = r["concurrency"]
    lines_rate, lines_p99 = [], []
    for rt in ("usernsrs", "runc"):
        path = pl.data(f"conc-{rt}.dat",
                       [(l["parallelism"], l[rt]["containers_per_s"],
                         l[rt]["stats"]["p99"] if l[rt]["stats"] else "?",
                         l[rt]["stats"]["p50"] if l[rt]["stats"] else "?")
                        for l in conc["levels"]])
        lines_rate.append(f'"{path}" using 1:2 with linespoints lw 2 pt 7 lc rgb "{COLORS[rt]}" '
                          f'title "{RT_NAME[rt]}"')
        lines_p99.append(f'"{path}" using 1:3 with linespoints lw 2 pt 7 lc rgb "{COLORS[rt]}" '
                         f'title "{RT_NAME[rt]} p99", "{path}" using 1:4 with linespoints lw 1 '
                         f'pt 6 dt 2 lc rgb "{COLORS[rt]}" title "{RT_NAME[rt]} p50"')
    pl.plot("concurrency.png", f"""
set multiplot layout 1,2 title "{conc['starts']} user-namespaced ctr run --rm /bin/true per runtime and parallelism (containerd {conc['containerd']}, {r['machine']['nproc']} CPUs)"
set grid
set key top left font ",9"
set xlabel "parallel starts"
set logscale x 2
set xrange [0.8:{max(l["parallelism"] for l in conc["levels"]) * 1.25:g}]
set xtics (1, 2, 4, 8, 16, 32, 64)
set title "throughput"
set ylabel "containers per second"
set yrange [0:*]
plot {', '.join(lines_rate)}
set title "latency of one start"
set ylabel "ms"
plot {', '.join(lines_p99)}
unset multiplot
""", size="1200,500")


# ---------------------------------------------------------------------------------------------
# README


def readme(r, made, out_dir):
    m, ver = r["machine"], r["versions"]
    L = []
    L.append("# Benchmarks: usernsrs side by side with runc and crun\n")
    L.append("Generated by `hack/bench/report.py` from [`results.json`](results.json); "
             "reproduce with\n\n```sh\nmake bench              # about 12 minutes on a 2-core VM; "
             "BENCH_RUNS=20 make bench for a quicker run\n```\n")
    L.append(f"Run of {r['date']} ({r['duration_s'] / 60:.1f} min): {m['nproc']} CPUs "
             f"({m['cpu_model']}), {m['mem_total_kib'] / 1024 / 1024:.1f} GiB, kernel "
             f"{m['kernel']}, cgroups {m['cgroups']}; {ver['containerd_1.6']}; "
             f"{ver['containerd_2']}; {ver['runc']}; {ver['crun']}; shim built in release mode "
             f"from {ver['usernsrs_shim'].get('source') or 'the work tree'}. Every part runs its "
             "variants interleaved (A B C A B C) in private containerd instances. Load average "
             f"at the start {' '.join(r['loadavg']['start'])}: the machine may be shared, see "
             "`loadavg` in results.json.\n")
    if os.path.exists(os.path.join(out_dir, "findings.md")):
        L.append("What the numbers mean, where the time and memory go: "
                 "[findings.md](findings.md).\n")

    t = targets(r)
    if t:
        L.append("## Targets\n\n| target | measured | |\n|---|---|---|")
        for name, measured, ok in t:
            L.append(f"| {name} | {measured} | {'met' if ok else '**missed**'} |")
        L.append("")

    if "start" in r:
        s = r["start"]
        L.append(f"## Start-to-exit latency\n\n`{s['command']}`, {s['runs']} runs per variant "
                 f"after {s['warmups']} warm-ups; user namespace on containerd 2.x: "
                 f"`{s['userns_args']['2']}`, on 1.6: `{s['userns_args']['1.6']}` (ctr 1.6 "
                 "chowns a copy of the snapshot once per mapping; the warm-up pays it).\n")
        L.append("| containerd | userns | runtime | p50 ms | p95 ms | p99 ms | p50 vs runc | "
                 "p99 vs runc | failures |\n|---|---|---|---|---|---|---|---|---|")
        for v in s["variants"]:
            if not v["runnable"]:
                L.append(f"| {v['containerd']} | {'yes' if v['userns'] else 'no'} | "
                         f"{RT_NAME[v['runtime']]} | not runnable: `{v['error']}` | | | | | |")
                continue
            st, ra = v["stats"], v.get("ratio_to_runc", {})
            L.append(f"| {v['containerd']} | {'yes' if v['userns'] else 'no'} | "
                     f"{RT_NAME[v['runtime']]} | {fmt_ms(st['p50'])} | {fmt_ms(st['p95'])} | "
                     f"{fmt_ms(st['p99'])} | {ra.get('p50', 0):.2f} | {ra.get('p99', 0):.2f} | "
                     f"{len(v['failures'])} |")
        L.append("\n![start latency](start_latency.png)\n![start latency CDF](start_cdf.png)\n")

    if "prep" in r:
        p = r["prep"]
        L.append("## Rootfs preparation against image size\n")
        L.append("Each container gets its own host range (as the kubelet gives each pod), so "
                 "the chown paths cannot reuse a chowned copy. Time: from `ctr run` (or "
                 "`ctr c create`) to the first line the container prints. Added: inodes and "
                 "allocated bytes under the snapshotter (and the root.path directory) after "
                 "the container started minus before (median per container); the snapshotter's "
                 "bolt database `metadata.db` apart. The containerd "
                 "2.4.2 instance of the runc slow_chown variant runs with `slow_chown = true`; "
                 "its overlayfs capabilities were "
                 f"`{p['instances']['c2sc']['overlayfs_capabilities']}` (default instance: "
                 f"`{p['instances']['c2']['overlayfs_capabilities']}`).\n")
        keys = [v["key"] for v in p["variants"]]
        labels = {v["key"]: v["label"] for v in p["variants"]}
        L.append("| variant | " + " | ".join(
            f"{i['files']} files, {i['layers']} layers" for i in p["images"]) + " |")
        L.append("|---|" + "---|" * len(p["images"]))
        for k in keys:
            cells = []
            for img in p["images"]:
                v = img["variants"][k]
                if not v.get("stats"):
                    cells.append(f"failed: {v['failures'][:1]}")
                    continue
                a = v["added_median"]
                md = a.get("metadata_allocated_bytes")
                cells.append(f"{fmt_ms(v['stats']['p50'])} ms; +{a['inodes']:.0f} inodes, "
                             f"+{human_bytes(a['allocated_bytes'])}"
                             + (f" (+{human_bytes(md)} metadata.db)" if md else ""))
            L.append(f"| {labels[k]} | " + " | ".join(cells) + " |")
        L.append("")
        srows = []
        for img in p["images"]:
            for how, s in (img.get("strace") or {}).items():
                if "span_ms_median" in s:
                    calls = ", ".join(f"{k} {v:.3f}" for k, v in s["syscall_ms_median"].items())
                    srows.append(f"| {img['files']} | {img['layers']} | {how} | "
                                 f"{s['span_ms_median']:.3f} | {calls} |")
                elif "error" in s:
                    srows.append(f"| {img['files']} | {img['layers']} | {how} | failed: "
                                 f"{s['error']} | |")
        if srows:
            L.append("The usernsrs idmap itself, from an strace (seccomp-bpf: only these "
                     "syscalls stop) of the shim's helper: first `open_tree` to the end of the "
                     "mount that completes the rootfs (median ms):\n")
            L.append("| files | layers | flow | span ms | syscalls (ms) |\n|---|---|---|---|---|")
            L += srows
            L.append("")
        L.append("![rootfs preparation](rootfs_prep.png)\n")

    if "memory" in r:
        mem = r["memory"]
        L.append(f"## Shim memory\n\n`sleep` containers with a user namespace on containerd "
                 f"{mem['containerd']}, started interleaved; PSS and RSS from "
                 "`/proc/PID/smaps_rollup` of the shim server processes. usernsrs runs one "
                 "shim server per container unless containers share "
                 "`io.kubernetes.cri.sandbox-id` (grouped), as the runc shim does.\n")
        L.append("PSS splits each shared page among the processes that map it, so the "
                 "binary's code counts whole in a lone shim and a 1/N share in each of N "
                 "shims; private dirty memory (heap, stacks, relocated data) is what each "
                 "further shim costs.\n")
        L.append("| mode | containers | runtime | shims | PSS per shim MiB | RSS per shim MiB "
                 "| private dirty per shim MiB | total PSS MiB |\n|---|---|---|---|---|---|---|---|")
        for mode, d in mem["modes"].items():
            for pt in d["points"]:
                for rt in ("usernsrs", "runc"):
                    x = pt[rt]
                    if not x["shims"]:
                        continue
                    L.append(f"| {mode} | {pt['containers']} | {RT_NAME[rt]} | {x['shims']} | "
                             f"{x['mean_pss_kib'] / MiB:.2f} | {x['mean_rss_kib'] / MiB:.2f} | "
                             f"{(x.get('mean_private_dirty_kib') or 0) / MiB:.2f} | "
                             f"{x['total_pss_kib'] / MiB:.1f} |")
        L.append("\n![shim memory](memory.png)\n")

    if "concurrency" in r:
        c = r["concurrency"]
        L.append(f"## Concurrency\n\n`{c['command']}`, {c['starts']} starts per runtime at each "
                 f"parallelism, in interleaved blocks of {c['block']}.\n")
        L.append("| parallel | runtime | containers/s | p50 ms | p99 ms | failures |\n"
                 "|---|---|---|---|---|---|")
        for l in c["levels"]:
            for rt in ("usernsrs", "runc"):
                x = l[rt]
                st = x["stats"] or {}
                L.append(f"| {l['parallelism']} | {RT_NAME[rt]} | {x['containers_per_s']:.1f} | "
                         f"{fmt_ms(st.get('p50'))} | {fmt_ms(st.get('p99'))} | "
                         f"{x['failures']} of {x['starts']} |")
        L.append("\n![concurrency](concurrency.png)\n")

    L.append("Knobs: `BENCH_RUNS` (start latency runs, default 100), `BENCH_PARTS` "
             "(start,prep,memory,concurrency), `BENCH_IMAGES` (FILESxLAYERS list), "
             "`BENCH_PREP_REPS`, `BENCH_MEMORY_COUNTS`, `BENCH_CONC_STARTS`, "
             "`BENCH_PARALLELISM`, `BENCH_OUT`, `BENCH_REV` (benchmark a committed revision "
             "instead of the work tree); see `hack/bench/bench.py`.")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "BENCH_OUT", os.path.join(REPO, "docs", "bench"))
    with open(os.path.join(out_dir, "results.json")) as f:
        r = json.load(f)
    pl = Plotter(out_dir)
    try:
        for part, fn in (("start", plot_start), ("prep", plot_prep), ("memory", plot_memory),
                         ("concurrency", plot_concurrency)):
            if part in r:
                fn(pl, r)
        readme(r, pl.made, out_dir)
    finally:
        pl.close()
    for name, measured, ok in targets(r):
        print(f"{'met   ' if ok else 'MISSED'}  {name}: {measured}")
    print(f"wrote {out_dir}/README.md and {', '.join(pl.made)}")


if __name__ == "__main__":
    main()
