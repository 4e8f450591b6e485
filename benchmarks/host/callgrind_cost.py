#!/usr/bin/env python3
"""Instructions per request of the SDK's server thread, from two callgrind runs.

Each run serves a fixed number of requests (N1, N2) with collection toggled on inside
the server's thread_main only, so the fake kernel and the load generator (another
process) cost nothing here, and neither does the kernel: callgrind sees user space only.
Subtracting the two runs removes the set-up: what is left, divided by N2 - N1, is the
marginal cost of one request.

    callgrind_cost.py NAME N1 FILE1 N2 FILE2 [NAME N1 FILE1 N2 FILE2 ...] --merge host.json
"""
import collections
import json
import os
import re
import sys

NAME_RE = re.compile(r"^\((\d+)\)(?: (.*))?$")
# The store's own work in the benchmark's RAM store: libc's copies.
STORE_FUNCS = ("memcpy", "memmove", "memset")
# liburing entry points that may call io_uring_enter.
ENTER_FUNCS = ("io_uring_submit", "io_uring_submit_and_wait", "io_uring_submit_and_get_events",
               "io_uring_submit_and_wait_timeout", "io_uring_wait_cqes", "io_uring_get_events",
               "__io_uring_get_cqe", "io_uring_peek_batch_cqe")


def parse(path):
    """Self cost by (object, function), and call counts by callee function."""
    names = {}

    def name(val):
        m = NAME_RE.match(val.strip())
        if not m:
            return val.strip()
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    # fn and ob name spaces are separate in the format: keep them apart.
    fn_names, ob_names = {}, {}
    self_cost = collections.Counter()
    calls = collections.Counter()
    ob = fn = cfn = None
    in_call = False
    with open(path) as f:
        for line in f:
            if not line or line[0] == "#":
                continue
            key, eq, val = line.partition("=")
            if eq and key in ("ob", "cob"):
                names = ob_names
                n = name(val)
                if key == "ob":
                    ob = n
                continue
            if eq and key in ("fn", "cfn"):
                names = fn_names
                n = name(val)
                if key == "fn":
                    fn = n
                else:
                    cfn = n
                continue
            if eq and key in ("fl", "fi", "fe", "cfi", "cfl"):
                continue
            if eq and key == "calls":
                calls[cfn] += int(val.split()[0])
                in_call = True
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if in_call:
                    in_call = False  # the inclusive cost of that call, not self cost
                else:
                    self_cost[(ob, fn)] += cost
    return self_cost, calls


def short_function(fn):
    """dmuser::server<ram_store>::slot_loop (coroutine), from the demangled mess."""
    kind = ""
    if "[clone .actor]" in fn:
        kind = " (coroutine body)"
    elif "[clone .destroy]" in fn:
        kind = " (coroutine destroy)"
    fn = fn.replace("(anonymous namespace)::", "")
    out, depth = [], 0
    for ch in fn:  # drop template arguments
        if ch == "<":
            depth += 1
            if depth == 1:
                out.append("<…>")
            continue
        if ch == ">":
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    fn = "".join(out)
    fn = fn.split("(", 1)[0]  # drop parameters
    return fn + kind


def short_object(ob):
    base = os.path.basename(ob or "?")
    if base.startswith("dmuser-microbench"):
        return "sdk"
    for lib, label in (("liburing", "liburing"), ("libc.so", "libc"), ("libstdc++", "libstdc++"),
                       ("ld-linux", "ld.so"), ("libfmt", "libfmt")):
        if lib in base:
            return label
    return base


def case(name, n1, f1, n2, f2):
    c1, k1 = parse(f1)
    c2, k2 = parse(f2)
    dn = n2 - n1
    per_fn = collections.Counter()
    for key in set(c1) | set(c2):
        d = c2.get(key, 0) - c1.get(key, 0)
        if d:
            per_fn[key] = d / dn
    total = sum(per_fn.values())
    by_object = collections.Counter()
    for (ob, _), v in per_fn.items():
        by_object[short_object(ob)] += v
    store = sum(v for (ob, fn), v in per_fn.items()
                if short_object(ob) == "libc" and fn and fn.split("@")[0].strip("_").split("_")[0] in
                ("memcpy", "memmove", "memset"))
    # Libc/liburing system-call wrappers are user-space instructions too, but they are the
    # price of the system calls themselves: liburing's, and libc's read/write family.
    wrappers = by_object.get("liburing", 0)
    enters = sum(k2.get(f, 0) - k1.get(f, 0) for f in ENTER_FUNCS) / dn
    merged = collections.Counter()
    for (ob, fn), v in per_fn.items():
        merged[f"{short_function(fn or '?')} [{short_object(ob)}]"] += v
    top = sorted(((v, name) for name, v in merged.items()), reverse=True)[:10]
    return {
        "name": name,
        "total": total,
        "store": store,
        "kernel": wrappers,
        "sdk": total - store - wrappers,
        "by_object": dict(by_object),
        "uring_calls_per_request": enters,
        "top": [[name, v] for v, name in top],
    }


def main():
    args = sys.argv[1:]
    merge = None
    if "--merge" in args:
        i = args.index("--merge")
        merge = args[i + 1]
        del args[i:i + 2]
    if not args or len(args) % 5:
        sys.exit(__doc__)
    cases = []
    for i in range(0, len(args), 5):
        name, n1, f1, n2, f2 = args[i:i + 5]
        cases.append(case(name, int(n1), f1, int(n2), f2))
    for c in cases:
        print(f"{c['name']}: {c['total']:.0f} instructions/request in the server thread: "
              f"SDK {c['sdk']:.0f}, store copies {c['store']:.0f}, liburing {c['kernel']:.0f}; "
              f"liburing enter calls/request {c['uring_calls_per_request']:.2f}")
        for label, v in sorted(c["by_object"].items(), key=lambda kv: -kv[1]):
            print(f"    {label:<10} {v:8.0f}")
    result = {
        "cases": cases,
        # The goal's figure: the worst case's instructions outside the store and liburing.
        "sdk_insn_per_request": max(c["sdk"] for c in cases),
        "top": cases[0]["top"],
    }
    if merge:
        data = {}
        if os.path.exists(merge):
            with open(merge) as f:
                data = json.load(f)
        data["callgrind"] = result
        with open(merge, "w") as f:
            json.dump(data, f, indent=1)


if __name__ == "__main__":
    main()
