#!/usr/bin/env python3
"""Turn one `./dev bench` run into benchmarks/results/: latest.md (the tables),
chart.png (gnuplot), summary.json (the figures, for HISTORY.md), raw/ (fio JSON).

Input: the guest's results folder (benchmarks/vm/fio-suite.sh's tarball,
unpacked), and optionally the host micro-benchmark and callgrind results.
Standard library only: it runs wherever meson runs.
"""
import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys

DEVICES = [
    ("brd", "brd (kernel ramdisk)"),
    ("nullb", "null_blk, memory backed"),
    ("loop", "loop on a tmpfs file"),
    ("nbd", "nbd + nbdkit memory (Unix socket)"),
    ("dmnbd", "dm-user + dmuser-nbd + nbdkit memory, 1 thread"),
    ("legacy", "dm-user + legacy C daemon (Part 1)"),
    ("ramdisk1", "dm-user + dmuser-ramdisk, 1 thread"),
    ("ramdisk2", "dm-user + dmuser-ramdisk, 2 threads"),
    ("ext4", "ext4 on dmuser-ramdisk (2 thr), file"),
    ("tmpfs", "tmpfs, file"),
    ("brd_end", "brd again, at the end (drift check)"),
    ("krbd", "krbd: Ceph RBD image, kernel client"),
    ("rbdnbd", "rbd-nbd: the same image, librbd over nbd"),
    ("dmrbd", "dm-user + dmuser-rbd: the same image, 2 threads"),
    ("fiorbd", "fio's rbd engine: librbd alone, no device"),
]
LABEL = dict(DEVICES)
SHORT = {
    "brd": "brd", "nullb": "null_blk", "loop": "loop/tmpfs", "nbd": "nbd",
    "legacy": "legacy C daemon", "ramdisk1": "dmuser-ramdisk 1t",
    "ramdisk2": "dmuser-ramdisk 2t", "ext4": "ext4 on dm-user", "tmpfs": "tmpfs file",
    "brd_end": "brd at the end", "dmnbd": "dmuser-nbd", "krbd": "krbd",
    "rbdnbd": "rbd-nbd", "dmrbd": "dmuser-rbd", "fiorbd": "fio rbd engine",
}
# The tool a user would pick instead of each network daemon (issue 13): device,
# its rival, the least ratio wanted on every figure (None: measured, no goal).
RIVALS = [
    ("dmnbd", "nbd", None),
    ("dmrbd", "rbdnbd", 1.0),
    ("dmrbd", "krbd", 0.8),
    ("rbdnbd", "krbd", None),
    ("dmrbd", "fiorbd", None),
]
CEPH = ("krbd", "rbdnbd", "dmrbd", "fiorbd")
DAEMONS = ("nbd", "dmnbd", "legacy", "ramdisk1", "ramdisk2", "ext4", "dmrbd")
# key, column title, chart title, unit ("iops" or "mibs")
FIGURES = [
    ("randread-4k-qd1", "4K rand read QD1", "4K randread QD1", "iops"),
    ("randread-4k-qd32", "4K rand read QD32", "4K randread QD32", "iops"),
    ("randwrite-4k-qd32", "4K rand write QD32", "4K randwrite QD32", "iops"),
    ("read-1m-qd8", "1M seq read QD8", "1M seq read QD8", "mibs"),
    ("write-1m-qd8", "1M seq write QD8", "1M seq write QD8", "mibs"),
]
# Goals for dmuser-ramdisk (issue 5): figure, minimum ratio to brd.
GOALS = [
    ("randread-4k-qd32", 0.5),
    ("randwrite-4k-qd32", 0.6),
    ("randread-4k-qd1", 0.15),
    ("read-1m-qd8", 2.0),
    ("write-1m-qd8", 2.0),
]
NBD_GOAL = 5.0
SDK_INSN_GOAL = 1500
RAMDISKS = ("ramdisk1", "ramdisk2")


def read_text(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def read_kv(path):
    out = {}
    for line in read_text(path).splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def load_figure(folder, key):
    """One fio run: the figure's value, latencies and side facts, or None."""
    path = os.path.join(folder, key + ".json")
    try:
        with open(path) as f:
            text = f.read()
        # fio may print notes before the JSON document.
        j = json.loads(text[text.index("{"):])
        job = j["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    if not side["io_bytes"]:
        return None
    lat = side.get("lat_ns", {}).get("percentile") or side.get("clat_ns", {}).get("percentile") or {}
    fig = {
        "iops": side["iops"],
        "mibs": side["bw"] / 1024.0,
        "p50_us": lat.get("50.000000", 0) / 1000.0 or None,
        "p99_us": lat.get("99.000000", 0) / 1000.0 or None,
        "fio_cpu": job.get("usr_cpu", 0) + job.get("sys_cpu", 0),
    }
    guest_cpu = read_text(os.path.join(folder, key + ".cpu"))
    if guest_cpu:
        fig["guest_cpu_pct"] = float(guest_cpu)
    osd_cpu = read_text(os.path.join(folder, key + ".osdcpu"))
    if osd_cpu:
        fig["osd_cpu_pct"] = float(osd_cpu)
    iouwrk = read_kv_line(read_text(os.path.join(folder, key + ".iouwrk")))
    if iouwrk:
        fig["iou_wrk"] = iouwrk
    return fig


def read_kv_line(text):
    out = {}
    for word in text.split():
        if "=" in word:
            k, v = word.split("=", 1)
            try:
                out[k] = int(v)
            except ValueError:
                pass
    return out


def load_vm(vm_dir):
    meta = read_kv(os.path.join(vm_dir, "meta.txt"))
    devices = {}
    for dev, _ in DEVICES:
        folder = os.path.join(vm_dir, dev)
        if not os.path.isdir(folder):
            continue
        entry = {
            "status": read_text(os.path.join(folder, "status"), "failed: no status"),
            "note": read_text(os.path.join(folder, "note")),
            "direct": read_text(os.path.join(folder, "direct"), "1"),
            "idle_iou_wrk": read_kv_line(read_text(os.path.join(folder, "iouwrk-idle"))),
            "figures": {},
        }
        for key, *_ in FIGURES:
            fig = load_figure(folder, key)
            if fig:
                entry["figures"][key] = fig
        devices[dev] = entry
    return meta, devices


def value(devices, dev, key):
    fig = devices.get(dev, {}).get("figures", {}).get(key)
    if not fig:
        return None
    unit = next(f[3] for f in FIGURES if f[0] == key)
    return fig[unit]


def ratio(devices, dev, key, base="brd"):
    v, b = value(devices, dev, key), value(devices, base, key)
    if v is None or not b:
        return None
    return v / b


def fmt_value(v, unit):
    if v is None:
        return "–"
    if unit == "iops":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    return f"{v:.0f}"


def fmt_ratio(r):
    if r is None:
        return ""
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def host_machine():
    model, cores = "unknown", os.cpu_count()
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = ""
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    return f"{model}, {cores} cores{mem}"


def git_rev(repo):
    try:
        rev = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --- the tables -----------------------------------------------------------------

def device_table(devices):
    head = ["device"] + [f[1] + (" (IOPS)" if f[3] == "iops" else " (MiB/s)") for f in FIGURES]
    head += ["QD1 p50 / p99 (µs)", "iou-wrk at QD32: fio / daemon"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dev, label in DEVICES:
        entry = devices.get(dev)
        if entry is None:
            continue
        if not entry["figures"]:
            rows.append(f"| {label} | {entry['status']} |" + " |" * (len(head) - 2))
            continue
        cells = [label + ("" if entry["direct"] == "1" else " (buffered)")]
        for key, _, _, unit in FIGURES:
            v = value(devices, dev, key)
            r = ratio(devices, dev, key)
            cells.append(fmt_value(v, unit) + (f" ({fmt_ratio(r)})" if r is not None else ""))
        qd1 = entry["figures"].get("randread-4k-qd1", {})
        cells.append(f"{qd1['p50_us']:.0f} / {qd1['p99_us']:.0f}" if qd1.get("p50_us") else "–")
        wrk = [entry["figures"].get(k, {}).get("iou_wrk") for k in ("randread-4k-qd32", "randwrite-4k-qd32")]
        wrk = [w for w in wrk if w]
        if wrk:
            fio = max(w.get("fio", 0) for w in wrk)
            daemon = max(w.get("daemon", 0) for w in wrk)
            has_daemon = dev in DAEMONS
            cells.append(f"{fio} / {daemon}" if has_daemon else f"{fio} / –")
        else:
            cells.append("–")
        if entry["status"] != "ok":
            cells[0] += f" [{entry['status']}]"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def rivals_table(devices):
    """Each network daemon against the tool a user would pick instead, figure by
    figure, as a ratio of the two in the same boot (issue 13's goals)."""
    head = ["device / rival"] + [f[1] for f in FIGURES] + ["goal"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    any_row = False
    for dev, rival, goal in RIVALS:
        if not devices.get(dev, {}).get("figures") or not devices.get(rival, {}).get("figures"):
            continue
        cells = [f"{SHORT[dev]} / {SHORT[rival]}"]
        met = True
        for key, *_ in FIGURES:
            r = ratio(devices, dev, key, rival)
            cells.append(f"{r:.2f}×" if r is not None else "–")
            if r is None or (goal is not None and r < goal):
                met = False
        cells.append("–" if goal is None else f"≥ {goal:g}× on every figure: "
                     + ("**met**" if met else "**not met**"))
        rows.append("| " + " | ".join(cells) + " |")
        any_row = True
    return "\n".join(rows) if any_row else ""


def cpu_table(devices):
    """Guest CPU busy % during each run: where a device is cheap or costly."""
    head = ["device"] + [f[2] for f in FIGURES]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    any_row = False
    for dev, label in DEVICES:
        figs = devices.get(dev, {}).get("figures", {})
        if not figs:
            continue
        cells = [SHORT[dev]]
        for key, _, _, unit in FIGURES:
            f = figs.get(key)
            if f and "guest_cpu_pct" in f:
                per = f["guest_cpu_pct"] / 100 * 2 * 1e6 / f["iops"] if f["iops"] else 0
                osd = f" · OSD {f['osd_cpu_pct']:.0f}%" if "osd_cpu_pct" in f else ""
                cells.append(f"{f['guest_cpu_pct']:.0f}% · {per:.0f} µs/IO{osd}")
            else:
                cells.append("–")
        rows.append("| " + " | ".join(cells) + " |")
        any_row = True
    return "\n".join(rows) if any_row else ""


def best_ramdisk(devices, key, base="brd"):
    """The better of the two ramdisk configurations on one figure."""
    best = None
    for dev in RAMDISKS:
        r = ratio(devices, dev, key, base)
        if r is not None and (best is None or r > best[1]):
            best = (dev, r)
    return best


def goals_table(devices, host):
    rows = ["| goal | figure | met? |", "|---|---|---|"]
    summary = []

    def add(goal, figure, met):
        mark = "–" if met is None else ("**met**" if met else "**not met**")
        rows.append(f"| {goal} | {figure} | {mark} |")
        summary.append((goal, met))

    have = any(devices.get(d, {}).get("figures") for d in RAMDISKS)
    for key, goal in GOALS:
        title = next(f[1] for f in FIGURES if f[0] == key)
        best = best_ramdisk(devices, key)
        if not have or best is None:
            add(f"{title} ≥ {goal}× brd", "not measured (dmuser-ramdisk not run)", None)
            continue
        dev, r = best
        unit = next(f[3] for f in FIGURES if f[0] == key)
        add(f"{title} ≥ {goal}× brd",
            f"{r:.2f}× ({fmt_value(value(devices, dev, key), unit)} vs "
            f"{fmt_value(value(devices, 'brd', key), unit)}, {SHORT[dev]})", r >= goal)
    # Against nbd: the worst figure of the better configuration.
    worst = None
    for key, *_ in FIGURES:
        best = best_ramdisk(devices, key, "nbd")
        if best and (worst is None or best[1] < worst[2]):
            worst = (key, *best)
    if worst:
        title = next(f[1] for f in FIGURES if f[0] == worst[0])
        add(f"every figure ≥ {NBD_GOAL:.0f}× nbd",
            f"worst: {title} {worst[2]:.1f}× ({SHORT[worst[1]]})", worst[2] >= NBD_GOAL)
    else:
        add(f"every figure ≥ {NBD_GOAL:.0f}× nbd", "not measured", None)
    # io_uring worker threads.
    for who, what in (("daemon", "no iou-wrk threads in the daemon at QD32"),
                      ("fio", "no iou-wrk threads in fio on /dev/mapper/NAME (NOWAIT)")):
        counts = []
        for dev in RAMDISKS:
            for key in ("randread-4k-qd32", "randwrite-4k-qd32"):
                w = devices.get(dev, {}).get("figures", {}).get(key, {}).get("iou_wrk")
                if w is not None:
                    counts.append((w.get(who, 0), dev, key))
        if counts:
            n, dev, key = max(counts)
            add(what, f"max {n} ({SHORT[dev]}, {key})" if n else "0 in every QD32 run", n == 0)
        else:
            add(what, "not measured", None)
    insn = (host or {}).get("callgrind", {}).get("sdk_insn_per_request")
    if insn is not None:
        add(f"SDK under {SDK_INSN_GOAL} instructions/request beyond syscalls (callgrind)",
            f"{insn:.0f}", insn < SDK_INSN_GOAL)
    else:
        add(f"SDK under {SDK_INSN_GOAL} instructions/request beyond syscalls (callgrind)",
            "not measured (no host micro-benchmark yet)", None)
    return "\n".join(rows), summary


def cover_letter(devices):
    """2020's measure: a file on ext4 over dm-user against a file on tmpfs."""
    if not devices.get("ext4", {}).get("figures") or not devices.get("tmpfs", {}).get("figures"):
        return ""
    rows = ["| figure | ext4 on dm-user | tmpfs | ext4 on dm-user / tmpfs |", "|---|---|---|---|"]
    for key, title, _, unit in FIGURES:
        a, b = value(devices, "ext4", key), value(devices, "tmpfs", key)
        r = f"{a / b:.2f}×" if a and b else "–"
        rows.append(f"| {title} | {fmt_value(a, unit)} | {fmt_value(b, unit)} | {r} |")
    direct = "direct" if devices["tmpfs"]["direct"] == "1" else "buffered (tmpfs takes no O_DIRECT on 6.1)"
    return ("\n".join(rows) + f"\n\nThe ext4 file is opened with O_DIRECT; the tmpfs file is {direct}, "
            "so tmpfs answers from the page cache with no block layer at all.\n")


def host_tables(host):
    if not host:
        return ""
    out = []
    runs = host.get("runs", [])
    if runs:
        out.append("Server CPU: the server threads' CPU time per request (user and kernel, system "
                   "calls included); load generator: the fake kernel's side, for scale. One "
                   "short window per case on a shared host: read the shape, not the digits.\n")
        out.append("| op | size | QD | server threads | requests/s | server CPU ns/request | "
                   "load generator ns/request | MiB/s | iou-wrk |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            flag = f" ({r['errors']} errors)" if r.get("errors") else ""
            out.append(f"| {r['op']} | {r['size']} | {r['qd']} | {r['threads']} | "
                       f"{r['rps']:,.0f}{flag} | {r['cpu_ns']:,.0f} | {r.get('loadgen_ns', 0):,.0f} | "
                       f"{r['mibs']:,.0f} | {r.get('iou_wrk', 0)} |")
    cg = host.get("callgrind")
    if cg:
        out.append("")
        out.append("Instructions per request under callgrind, in the server's thread only (user "
                   "space: the kernel's side of each system call is not counted), the marginal "
                   "cost between two runs of 2,000 and 12,000 requests. Nearly deterministic "
                   "(how many completions share a loop turn depends on timing: ±3 %), so fit to "
                   "compare commits. SDK = total − the store's memcpy − liburing.")
        out.append("")
        out.append("| case | server thread, total | SDK | store's copies (memcpy) | liburing | "
                   "liburing calls that may enter the kernel, per request |")
        out.append("|---|---|---|---|---|---|")
        for c in cg.get("cases", []):
            out.append(f"| {c['name']} | {c['total']:,.0f} | **{c['sdk']:,.0f}** | {c['store']:,.0f} | "
                       f"{c['kernel']:,.0f} | {c.get('uring_calls_per_request', 0):.2f} |")
        if cg.get("top"):
            out.append("")
            out.append("Where the SDK's instructions go (self cost per request, first case):")
            out.append("")
            out.append("| function | instructions/request |")
            out.append("|---|---|")
            for name, n in cg["top"]:
                out.append(f"| `{name}` | {n:,.0f} |")
    return "\n".join(out)


# --- the chart ------------------------------------------------------------------

def chart(devices, out_dir, meta=None, gnuplot="gnuplot"):
    """Clustered bars: one cluster per figure, one bar per device, as a ratio to
    brd on a log axis (so 0.5× and 2× sit equally far from brd's line)."""
    shown = [d for d, _ in DEVICES if devices.get(d, {}).get("figures") and d not in ("brd", "brd_end")]
    if "brd" not in devices or not devices["brd"]["figures"] or not shown:
        return None
    dat = os.path.join(out_dir, "chart.dat")
    with open(dat, "w") as f:
        f.write("figure " + " ".join(f'"{SHORT[d]}"' for d in shown) + "\n")
        for key, _, title, unit in FIGURES:
            cells = []
            for d in shown:
                r = ratio(devices, d, key)
                cells.append(f"{r:.4f}" if r else "NaN")
            b = value(devices, "brd", key)
            brd = f"brd {fmt_value(b, unit)} {'IOPS' if unit == 'iops' else 'MiB/s'}"
            f.write(f'"{title}\\n({brd})" ' + " ".join(cells) + "\n")
    png = os.path.join(out_dir, "chart.png")
    colors = {"nullb": "#9e9e9e", "loop": "#bdbdbd", "nbd": "#e57373", "legacy": "#ffb74d",
              "ramdisk1": "#64b5f6", "ramdisk2": "#1565c0", "ext4": "#4db6ac", "tmpfs": "#a5d6a7",
              "dmnbd": "#c62828", "krbd": "#7e57c2", "rbdnbd": "#ce93d8", "dmrbd": "#4a148c",
              "fiorbd": "#a1887f"}
    plots = []
    for i, d in enumerate(shown):
        plots.append(f"'{dat}' using {i + 2}:xtic(1) title columnhead({i + 2}) "
                     f"lc rgb '{colors.get(d, '#666666')}'")
    # A log axis in powers of two that holds every bar and every goal.
    ratios = [ratio(devices, d, k) for d in shown for k, *_ in FIGURES] + [g for _, g in GOALS] + [1]
    ratios = [r for r in ratios if r]
    lo_exp = min(-3, math.floor(math.log2(min(ratios) * 0.8)))
    hi_exp = max(2, math.ceil(math.log2(max(ratios) * 1.25)))
    lo, hi = 2.0 ** lo_exp, 2.0 ** hi_exp
    ytics = ", ".join(f'"{2 ** e if e >= 0 else "1/" + str(2 ** -e)}" {2.0 ** e}'
                      for e in range(lo_exp, hi_exp + 1))
    # The goals for dmuser-ramdisk, as a red mark over each cluster.
    goal_marks = "\n".join(
        f'set arrow from {i - 0.45}, first {g} to {i + 0.45}, first {g} nohead lw 2 lc rgb "#c62828" front'
        for i, (key, *_) in enumerate(FIGURES) for k, g in GOALS if k == key)
    plots.append("NaN with lines lw 2 lc rgb '#c62828' title 'goal for dmuser-ramdisk'")
    meta = meta or {}
    subtitle = (f"{meta.get('date', '')[:10]}, {meta.get('runtime_s', '?')} s per figure, "
                f"kernel {meta.get('kernel', '?')}, all in one boot")
    script = f"""
set terminal pngcairo size 1400,720 font "DejaVu Sans,12"
set output '{png}'
set title "Each device against brd in the same boot (ratio; log scale; 1 = brd)\\n{{/*0.75 {subtitle}}}" font ",15"
set style data histograms
set style histogram clustered gap 1.5
set style fill solid 0.95 border rgb "#404040"
set boxwidth 0.9
set logscale y 2
set yrange [{lo}:{hi}]
set ytics ({ytics})
set bmargin 4
set grid ytics lc rgb "#dddddd"
set ylabel "throughput ÷ brd's"
set key outside right top vertical Left reverse noenhanced
set termoption enhanced
set xtics nomirror scale 0
set ytics nomirror
set xrange [-0.6:{len(FIGURES) - 0.4}]
set border 3
{goal_marks}
set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 lc rgb "#000000" dt 2
plot {", ".join(plots)}
"""
    gp = os.path.join(out_dir, "chart.gp")
    with open(gp, "w") as f:
        f.write(script)
    try:
        subprocess.run([gnuplot, gp], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"report: gnuplot failed: {getattr(e, 'stderr', e)}", file=sys.stderr)
        return None
    finally:
        os.remove(gp)
        os.remove(dat)
    return png


# --- HISTORY.md -----------------------------------------------------------------

def key_figures(devices):
    out = {}
    for dev in ("brd",) + RAMDISKS:
        for key, *_ in FIGURES:
            v, r = value(devices, dev, key), ratio(devices, dev, key)
            if v is not None:
                out[f"{dev}/{key}"] = {"value": v, "ratio": r}
    return out


def history_line(note, rev, before, after):
    def cell(figs):
        if not figs:
            return "–"
        parts = []
        for key, _, title, unit in FIGURES:
            best = None
            for dev in RAMDISKS:
                f = figs.get(f"{dev}/{key}")
                if f and f["ratio"] is not None and (best is None or f["ratio"] > best["ratio"]):
                    best = f
            if best:
                parts.append(f"{title} {fmt_value(best['value'], unit)} ({best['ratio']:.2f}×)")
        return "; ".join(parts) or "–"
    today = datetime.date.today().isoformat()
    return f"| {today} | {rev} | {note} | {cell(before)} | {cell(after)} |"


# --- main -----------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vm", help="the guest's results folder (unpacked tarball)")
    ap.add_argument("--host", help="host micro-benchmark results (JSON)")
    ap.add_argument("--out", required=True, help="benchmarks/results")
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--note", help="what changed: append a line to HISTORY.md")
    ap.add_argument("--vm-log", help="the run's console log, for the record")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    meta, devices = ({}, {})
    if args.vm and os.path.isdir(args.vm):
        meta, devices = load_vm(args.vm)
    host = None
    if args.host and os.path.exists(args.host):
        with open(args.host) as f:
            host = json.load(f)

    # Keep the previous figures for HISTORY.md before overwriting them.
    summary_path = os.path.join(args.out, "summary.json")
    before = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            before = json.load(f).get("key_figures", {})

    # The commit and time of the run itself, when ./dev bench recorded them.
    rev = (read_text(os.path.join(args.vm, "commit.txt")) if args.vm else "") or git_rev(args.repo)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if meta.get("date"):
        now = meta["date"].replace("T", " ").replace("Z", " UTC")
    md = [f"# dm-user benchmarks: latest run\n"]
    md.append(f"- date: {now}, commit {rev}")
    md.append(f"- machine: {host_machine()}")
    if meta:
        md.append(f"- guest: {meta.get('guest_cpus', '?')} vCPU QEMU TCG, "
                  f"{meta.get('guest_mem_mb', '?')} MiB, kernel {meta.get('kernel', '?')}, "
                  f"dm-user target {meta.get('dm_user') or 'not loaded'}, {meta.get('fio', 'fio')}")
        md.append(f"- each figure: fio, io_uring, direct I/O, {meta.get('runtime_s', '?')} s after a "
                  f"{meta.get('ramp_s', '?')} s ramp, one pass; devices of {meta.get('size_mb', '?')} MiB, "
                  "filled before the reads; all in one boot"
                  + (f"; the RBD image {meta['ceph_size_mb']} MiB" if meta.get("ceph_size_mb")
                     and any(devices.get(d, {}).get("figures") for d in CEPH) else ""))
    # The host's load average as the VM started: the guest's vCPUs are host threads.
    load = read_text(os.path.join(args.vm, "host-load.txt")) if args.vm else ""
    if load:
        md.append(f"- host load average as the VM started: {load}")
    md.append("")
    try:
        busy = float(load.split()[0]) > 1.0
    except (ValueError, IndexError):
        busy = True
    if busy:
        md.append("> Other work shared this machine's 2 cores during this run (or its load is\n"
                  "> unknown): the absolute figures are noisy (passes spread ±20–40 %). The ratios\n"
                  "> to brd, taken minutes apart in the same boot, are what to read.\n")
    else:
        md.append("> A quiet host; still, passes of one figure spread ±10–20 % in this emulated\n"
                  "> guest. The ratios to brd, taken minutes apart in the same boot, are what to read.\n")
    if devices:
        md.append("## Devices in the VM\n")
        md.append("Each cell: the absolute figure, and in brackets its ratio to brd from the same boot.\n")
        md.append(device_table(devices))
        md.append("")
        notes = [f"- {SHORT[d]}: {devices[d]['note']}" for d, _ in DEVICES
                 if devices.get(d, {}).get("note")]
        if notes:
            md.append("\n".join(notes) + "\n")
        png = chart(devices, args.out, meta)
        if png:
            md.append("![each device against brd](chart.png)\n")
        md.append("`iou-wrk`: io_uring worker threads counted during the QD32 runs (most seen), of fio "
                  "and of the device's daemon. Zero means io_uring waited by polling, with no thread "
                  "parked per request.\n")
        rivals = rivals_table(devices)
        if rivals:
            md.append("## Against the tool a user would pick instead (issue 13)\n")
            md.append("Each network daemon's figures divided by its rival's, from the same boot. "
                      "dmuser-nbd and nbd-client each have one connection to an `nbdkit memory` "
                      "server of their own (same size, same socket path); krbd, rbd-nbd and "
                      "dmuser-rbd map one RBD image in turn on a one-node Ceph cluster in the guest "
                      f"({meta.get('ceph_size_mb', '?')} MiB, filled once by the first of them). "
                      "Under TCG the OSD may be the bottleneck for all of them: see its CPU below.\n")
            md.append(rivals)
            md.append("")
        goals, _ = goals_table(devices, host)
        md.append("## Goals for dmuser-ramdisk (issue 5)\n")
        md.append("Ratios from this run; each goal takes the better of the 1- and 2-thread runs.\n")
        md.append(goals)
        md.append("")
        cl = cover_letter(devices)
        if cl:
            md.append("## The 2020 cover letter's measure: ext4 on dm-user against tmpfs\n")
            md.append(cl)
        cpu = cpu_table(devices)
        if cpu:
            md.append("## Guest CPU during each run\n")
            md.append("Busy share of both vCPUs (ramp included), and that as vCPU-µs per I/O: what "
                      "each request costs the whole guest, fio included. For the Ceph clients, "
                      "the OSD's own CPU in % of one vCPU: near 100 %, the OSD is the bottleneck.\n")
            md.append(cpu)
            md.append("")
        profiles = []
        for dev, _ in DEVICES:
            p = read_text(os.path.join(args.vm, dev, "profile.txt")) if args.vm else ""
            if p:
                profiles.append(p)
        if profiles:
            md.append("## perf in the guest (cpu-clock, whole system)\n")
            md.append("```\n" + "\n\n".join(profiles) + "\n```\n")
    else:
        md.append("No VM results in this run.\n")
    ht = host_tables(host)
    md.append("## Host micro-benchmarks: the SDK through the fake kernel\n")
    md.append(ht + "\n" if ht else "Not run: the SDK's fake kernel (include/dmuser/testing/) "
              "or benchmarks/host/ is not built yet.\n")
    md.append("How to read all this: [../README.md](../README.md).")
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write("\n".join(md) + "\n")

    after = key_figures(devices)
    with open(summary_path, "w") as f:
        json.dump({"date": now, "commit": rev, "meta": meta, "key_figures": after,
                   "devices": devices, "host": host}, f, indent=1, sort_keys=True)

    if args.note:
        hist = os.path.join(args.out, "HISTORY.md")
        if not os.path.exists(hist):
            with open(hist, "w") as f:
                f.write("# What each change did\n\nOne line per measured change: dmuser-ramdisk's "
                        "figures (the better of 1 and 2 threads, ratio to brd of the same boot) "
                        "before and after.\n\n| date | commit | change | before | after |\n"
                        "|---|---|---|---|---|\n")
        with open(hist, "a") as f:
            f.write(history_line(args.note, rev, before, after) + "\n")
    print(os.path.join(args.out, "latest.md"))


if __name__ == "__main__":
    main()
