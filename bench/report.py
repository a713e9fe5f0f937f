"""Turns the raw JSON of one benchmark run into the markdown report (tables, ratios, targets, and in
A/B mode the comparison of two ferricorn builds)."""

import statistics

MODE_LABEL = {"keepalive": "keep-alive", "close": "Connection: close", "ws16": "16 clients",
              "ws256": "256 clients"}


def interface_of(item):
    """A server's or app's interface; results from before the ASGI rows have none (WSGI)."""
    return item.get("interface") or "wsgi"


def subset(raw, iface):
    """The part of a run's raw JSON that concerns one interface (wsgi | asgi): its servers, apps,
    records and memory tests. Every table and target works on one such part."""
    servers = [s for s in raw["servers"] if interface_of(s) == iface]
    apps = [a for a in raw["apps"] if interface_of(a) == iface]
    names = {s["name"] for s in servers}
    app_names = {a["name"] for a in apps}
    return dict(raw, servers=servers, apps=apps,
                records=[r for r in raw["records"] if r["server"] in names and r["app"] in app_names],
                memtest=[m for m in raw["memtest"] if m["server"] in names])


# --------------------------------------------------------------------------- aggregation


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ok_records(raw, app, server):
    return [r for r in raw["records"] if r["app"] == app and r["server"] == server and "error" not in r]


def load_stats(raw, app, mode, server):
    """Medians over repeats of one (app, mode, server) cell; errors are summed."""
    loads = [r["loads"][mode] for r in ok_records(raw, app, server) if mode in r.get("loads", {})]
    if not loads:
        return None
    ceiling = raw["ceilings"].get(app, {}).get("per_cpu_s")
    app_info = next(a for a in raw["apps"] if a["name"] == app)
    eff = eff_wall = None
    if ceiling and app_info.get("efficiency", app != "io"):
        eff = median(l["rps"] / (ceiling * l["cores"]) if l["cores"] else None for l in loads)
        eff_wall = median(l["rps"] for l in loads) / ceiling
    return {
        "rps": median(l["rps"] for l in loads),
        "p50": median(l["p50_ms"] for l in loads),
        "p99": median(l["p99_ms"] for l in loads),
        "errors": sum(l["errors"] for l in loads),
        "cores": median(l["cores"] for l in loads),
        "queue": median(l["accept_queue"]["median"] for l in loads if "accept_queue" in l),
        "queue_max": max((l["accept_queue"]["max"] for l in loads if "accept_queue" in l), default=None),
        "eff": eff,
        "eff_wall": eff_wall,  # requests/s ÷ ceiling (not per core)
        "cpu_us": median(l.get("cpu_us_per_req") for l in loads),
        "n": len(loads),
        "connections": app_info["connections"],
    }


def memory_stats(raw, app, server):
    recs = ok_records(raw, app, server)
    if not recs:
        return None
    return {
        "idle_rss": median(r["idle"]["rss"] for r in recs),
        "idle_pss": median(r["idle"]["pss"] for r in recs),
        "after_rss": median(r["after"]["rss"] for r in recs),
        "after_pss": median(r["after"]["pss"] for r in recs),
        "procs": median(r["idle"]["procs"] for r in recs),
        "startup": median(r["startup_ms"] for r in recs),
    }


def rows(raw):
    return [(a["name"], mode) for a in raw["apps"] for mode in a["modes"]]


def family(raw, fam):
    """The configs of one server family; an A/B run's other build (`twin_of`) is not one of them:
    ratios and targets speak of this tree's build."""
    return [s["name"] for s in raw["servers"] if s["name"].startswith(fam) and not s.get("twin_of")]


def best(raw, app, mode, fam):
    """(server, stats) of the family's config with the most requests/s in this row."""
    cands = [(s, load_stats(raw, app, mode, s)) for s in family(raw, fam)]
    cands = [(s, st) for s, st in cands if st]
    return max(cands, key=lambda c: c[1]["rps"]) if cands else (None, None)


def ratio(a, b):
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------- formatting


def f_rps(v):
    return "n/a" if v is None else f"{v:,.0f}"


def f_ms(v):
    if v is None:
        return "n/a"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def f_x(v):
    return "n/a" if v is None else f"{v:.2f}×"


def f_mib(v):
    return "n/a" if v is None else f"{v:.0f}"


def f_queue(st):
    if st["queue"] is None:
        return "n/a"
    return f"{st['queue']:g} ({st['queue_max']})"


def f_eff(v):
    return f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"


def f_pct(v):
    return "n/a" if v is None else f"{v * 100:+.1f}%"


def table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def app_title(raw, app):
    return next(a["title"] for a in raw["apps"] if a["name"] == app)


def server_header(raw):
    return [s["label"] for s in raw["servers"]]


def per_server_table(raw, cell):
    """Rows = (app, mode), columns = servers; cell(stats) renders one measured cell."""
    body = []
    for app, mode in rows(raw):
        cells = []
        for s in raw["servers"]:
            st = load_stats(raw, app, mode, s["name"])
            cells.append(cell(st) if st else "n/a")
        body.append([app_title(raw, app), MODE_LABEL[mode]] + cells)
    return table(["app", "mode"] + server_header(raw), body)


# --------------------------------------------------------------------------- sections


def ratios_table(raw):
    body = []
    for app, mode in rows(raw):
        f_name, f_st = best(raw, app, mode, "ferricorn")
        _, g_st = best(raw, app, mode, "granian")
        _, u_st = best(raw, app, mode, "gunicorn")
        fr = f_st["rps"] if f_st else None
        pair = []
        for kind in ("sync", "gthread"):
            fs = load_stats(raw, app, mode, f"ferricorn-{kind}")
            gs = load_stats(raw, app, mode, f"gunicorn-{kind}")
            pair.append(f_x(ratio(fs and fs["rps"], gs and gs["rps"])))
        body.append([app_title(raw, app), MODE_LABEL[mode], f_name or "n/a", f_rps(fr),
                     f_x(ratio(fr, g_st and g_st["rps"])), f_x(ratio(fr, u_st and u_st["rps"]))] + pair)
    return table(["app", "mode", "best ferricorn", "req/s", "÷ best granian", "÷ best gunicorn",
                  "ferricorn sync ÷ gunicorn sync", "ferricorn gthread ÷ gunicorn gthread"], body)


def ceiling_table(raw):
    body = []
    for a in raw["apps"]:
        c = raw["ceilings"].get(a["name"], {})
        if "error" in c:
            body.append([a["title"], "error: " + c["error"][:80], ""])
        else:
            body.append([a["title"], f_rps(c.get("per_cpu_s")), f_rps(c.get("per_wall_s"))])
    return table(["app", "calls/s per CPU-second", "calls/s wall (one pinned core)"], body)


def memory_table(raw):
    body = []
    for a in raw["apps"]:
        cells = []
        for s in raw["servers"]:
            m = memory_stats(raw, a["name"], s["name"])
            cells.append("n/a" if not m else
                         f"{f_mib(m['idle_rss'])} / {f_mib(m['idle_pss'])} → "
                         f"{f_mib(m['after_rss'])} / {f_mib(m['after_pss'])}")
        body.append([a["title"]] + cells)
    return table(["app"] + server_header(raw), body)


def startup_table(raw):
    body = []
    for a in raw["apps"]:
        cells = []
        for s in raw["servers"]:
            m = memory_stats(raw, a["name"], s["name"])
            cells.append("n/a" if not m else f"{m['startup']:.0f}")
        body.append([a["title"]] + cells)
    return table(["app"] + server_header(raw), body)


def memtest_cell(rec):
    if "error" in rec:
        return "error: " + rec["error"][:120]
    i, a = rec["idle"], rec["after"]
    return (f"RSS {i['rss']:.0f} → {a['rss']:.0f} MiB ({f_pct(rec['growth_rss'])}), "
            f"PSS {i['pss']:.0f} → {a['pss']:.0f} MiB ({f_pct(rec['growth_pss'])})")


def memtest_table(raw):
    body = []
    for rec in raw["memtest"]:
        label = next(s["label"] for s in raw["servers"] if s["name"] == rec["server"])
        rps = ", ".join(f_rps(v) for v in rec.get("rps", []))
        body.append([label, memtest_cell(rec), rps])
    return table(["server", "idle → after loads", "req/s of each load"], body)


def failures(raw):
    lines = []
    for s in raw["servers"]:
        if s["unavailable"]:
            lines.append(f"- **{s['label']}**: not available — {s['unavailable'][:400]}")
    for r in raw["records"]:
        if "error" in r and not any(s["name"] == r["server"] and s["unavailable"] for s in raw["servers"]):
            lines.append(f"- {r['server']} × {r['app']} (repeat {r['repeat']}): {r['error'][:400]}")
    return lines


# --------------------------------------------------------------------------- targets


def verdict(value, ok):
    if value is None:
        return "n/a"
    return "met" if ok else "**not met**"


def target_ratio(raw, app, mode, peer_fam, goal):
    _, f = best(raw, app, mode, "ferricorn")
    _, p = best(raw, app, mode, peer_fam)
    r = ratio(f and f["rps"], p and p["rps"])
    return f_x(r), verdict(r, r is not None and r >= goal)


def target_rows_ratio(raw, apps_modes, peer_fam, goal):
    """One verdict over several rows: every row must reach `goal`."""
    parts, vals = [], []
    for app, mode in apps_modes:
        _, f = best(raw, app, mode, "ferricorn")
        _, p = best(raw, app, mode, peer_fam)
        r = ratio(f and f["rps"], p and p["rps"])
        vals.append(r)
        parts.append(f"{app} {MODE_LABEL[mode]} {f_x(r)}")
    status = "n/a" if None in vals or not vals else verdict(1, all(v >= goal for v in vals))
    return "; ".join(parts) or "n/a", status


def target_efficiency(raw):
    _, f = best(raw, "flask", "keepalive", "ferricorn")
    e = f and f["eff"]
    return (f"{e:.2f}" if e is not None else "n/a"), verdict(e, e is not None and e >= 0.9)


def target_io(raw):
    fs = load_stats(raw, "io", "keepalive", "ferricorn-gthread")
    gs = load_stats(raw, "io", "keepalive", "gunicorn-gthread")
    r = ratio(fs and fs["rps"], gs and gs["rps"])
    errs = sum(st["errors"] for st in (load_stats(raw, "io", m, "ferricorn-gthread") for m in
                                        ("keepalive", "close")) if st)
    waiting = fs and fs["queue"]
    ok = r is not None and r >= 1.5 and errs == 0 and not waiting
    left = "n/a" if waiting is None else f"{waiting:g}"
    text = f"{f_x(r)}, ferricorn errors {errs}, keep-alive connections left waiting {left}" if fs else "n/a"
    return text, verdict(r, ok)


def target_p99(raw):
    parts, verdicts = [], []
    for app, mode in rows(raw):
        if next(a["connections"] for a in raw["apps"] if a["name"] == app) != 64:
            continue
        _, f = best(raw, app, mode, "ferricorn")
        _, g = best(raw, app, mode, "granian")
        if not f or not g:
            verdicts.append(None)
            continue
        verdicts.append(f["p99"] <= g["p99"])
        if f["p99"] > g["p99"]:
            parts.append(f"{app} {MODE_LABEL[mode]}: {f_ms(f['p99'])} > {f_ms(g['p99'])} ms")
    if not verdicts or None in verdicts:
        return "n/a", "n/a"
    return ("; ".join(parts) or "all rows within"), verdict(1, all(verdicts))


def versus_gunicorn(raw, ok, describe):
    """A hello target that pairs ferricorn with gunicorn of the same worker class (sync, gthread):
    `ok(f, g)` and `describe(f, g)` take the two servers' memory_stats."""
    parts, oks = [], []
    for kind in ("sync", "gthread"):
        f = memory_stats(raw, "hello", f"ferricorn-{kind}")
        g = memory_stats(raw, "hello", f"gunicorn-{kind}")
        if not f or not g:
            oks.append(None)
            continue
        oks.append(ok(f, g))
        parts.append(f"{kind}: {describe(f, g)}")
    if None in oks:
        return "n/a", "n/a"
    return "; ".join(parts), verdict(1, all(oks))


def target_idle_memory(raw):
    return versus_gunicorn(
        raw,
        lambda f, g: f["idle_rss"] <= g["idle_rss"] and f["idle_pss"] <= g["idle_pss"],
        lambda f, g: (f"{f_mib(f['idle_rss'])}/{f_mib(f['idle_pss'])} vs "
                      f"{f_mib(g['idle_rss'])}/{f_mib(g['idle_pss'])} MiB"))


def target_growth(raw):
    recs = [r for r in raw["memtest"] if r["server"] in family(raw, "ferricorn") and "error" not in r]
    if not recs:
        return "n/a", "n/a"
    worst = max(max(r["growth_rss"], r["growth_pss"]) for r in recs)
    parts = [f"{r['server']}: RSS {f_pct(r['growth_rss'])}, PSS {f_pct(r['growth_pss'])}" for r in recs]
    return "; ".join(parts), verdict(worst, worst <= 0.10)


def target_startup(raw):
    return versus_gunicorn(
        raw,
        lambda f, g: f["startup"] <= g["startup"],
        lambda f, g: f"{f['startup']:.0f} vs {g['startup']:.0f} ms")


def targets(raw):
    have = {a["name"] for a in raw["apps"]}
    close_rows = [(a["name"], "close") for a in raw["apps"] if "close" in a["modes"]]
    body_rows = [(a, "keepalive") for a in ("big", "echo", "file") if a in have]
    out = []
    if "hello" in have:
        out.append(["hello keep-alive ≥ 1.3× best granian", *target_ratio(raw, "hello", "keepalive", "granian", 1.3)])
        out.append(["hello keep-alive ≥ 10× best gunicorn", *target_ratio(raw, "hello", "keepalive", "gunicorn", 10)])
    if close_rows:
        out.append(["Connection: close ≥ 1.2× best granian (every close row)",
                    *target_rows_ratio(raw, close_rows, "granian", 1.2)])
    if "flask" in have:
        out.append(["Flask keep-alive ≥ 1.15× best granian", *target_ratio(raw, "flask", "keepalive", "granian", 1.15)])
        out.append(["Flask keep-alive efficiency ≥ 0.9 of the ceiling", *target_efficiency(raw)])
    if body_rows:
        out.append(["100 KiB response, 100 KiB echo, 1 MiB file ≥ 1.2× best granian",
                    *target_rows_ratio(raw, body_rows, "granian", 1.2)])
    if "io" in have:
        out.append(["I/O-bound ≥ 1.5× gunicorn gthread (32 threads each), no errors", *target_io(raw)])
    out.append(["p99 at c64 never above best granian's (same row)", *target_p99(raw)])
    if "hello" in have:
        out.append(["idle memory (hello, master + 2 workers) ≤ gunicorn's, RSS and PSS", *target_idle_memory(raw)])
        out.append(["memory growth after 3 loads ≤ 10% (RSS and PSS)", *target_growth(raw)])
        out.append(["startup to first 200 (hello) ≤ gunicorn's", *target_startup(raw)])
    return table(["target", "measured (ferricorn ÷ peer)", "status"], out)


# --------------------------------------------------------------------------- A/B: two ferricorn builds

AB_THRESHOLD = 0.03  # a difference below 3% of the old median is never flagged


def ab_samples(raw, app, mode, server):
    """{repeat: load} of one (app, mode, server) cell."""
    return {r["repeat"]: r["loads"][mode] for r in ok_records(raw, app, server) if mode in r.get("loads", {})}


def ab_metric(samples, key):
    vals = [l.get(key) for l in samples.values()]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def ab_worse(old, new, higher_is_better):
    """The A/B rule: the new build is worse when its median is worse than the old one's by more than
    AB_THRESHOLD and the two min–max ranges over the repeats do not overlap. Returns -1 (worse),
    +1 (better by the same rule) or 0."""
    if not old or not new or not old["median"]:
        return 0
    r = new["median"] / old["median"]
    if higher_is_better:
        if r < 1 - AB_THRESHOLD and new["max"] < old["min"]:
            return -1
        if r > 1 + AB_THRESHOLD and new["min"] > old["max"]:
            return 1
    else:
        if r > 1 + AB_THRESHOLD and new["min"] > old["max"]:
            return -1
        if r < 1 - AB_THRESHOLD and new["max"] < old["min"]:
            return 1
    return 0


def ab_rows(raw):
    """One dict per (app, mode, config) of the A/B comparison."""
    out = []
    for sub in (subset(raw, "wsgi"), subset(raw, "asgi")):
        out += ab_rows_of(sub)
    return out


def ab_rows_of(raw):
    out = []
    pairs = [(s["twin_of"], s["name"]) for s in raw["servers"] if s.get("twin_of")]
    for app, mode in rows(raw):
        for new_name, old_name in pairs:
            old_s, new_s = ab_samples(raw, app, mode, old_name), ab_samples(raw, app, mode, new_name)
            row = {"app": app, "mode": mode, "config": new_name.split("-", 1)[1], "new": new_name,
                   "old": old_name}
            for key, metric in (("rps", "rps"), ("p99", "p99_ms"), ("cpu", "cpu_us_per_req"),
                                ("others", "other_cores")):
                row[key] = {"old": ab_metric(old_s, metric), "new": ab_metric(new_s, metric)}
            row["errors"] = {"old": sum(l["errors"] for l in old_s.values()),
                             "new": sum(l["errors"] for l in new_s.values())}
            # new ÷ old of the two loads of the same repeat, which ran back to back
            row["paired"] = [new_s[k]["rps"] / old_s[k]["rps"] for k in sorted(old_s)
                             if k in new_s and old_s[k]["rps"]]
            o, n = row["rps"]["old"], row["rps"]["new"]
            row["ratio"] = n["median"] / o["median"] if o and n and o["median"] else None
            c_o, c_n = row["cpu"]["old"], row["cpu"]["new"]
            row["cpu_ratio"] = c_n["median"] / c_o["median"] if c_o and c_n and c_o["median"] else None
            flags = []
            if not o or not n:
                flags.append("n/a")
            else:
                v = {"rps": ab_worse(o, n, True), "p99": ab_worse(row["p99"]["old"], row["p99"]["new"], False),
                     "cpu": ab_worse(c_o, c_n, False)}
                if v["rps"] < 0:
                    flags.append(f"**loss > {AB_THRESHOLD:.0%}**")
                if v["p99"] < 0:
                    flags.append("**p99 up**")
                if v["cpu"] < 0:
                    flags.append("**CPU up**")
                if row["errors"]["new"] > row["errors"]["old"]:
                    flags.append(f"**errors {row['errors']['old']} → {row['errors']['new']}**")
                if v["rps"] > 0:
                    flags.append("faster")
                if v["p99"] > 0:
                    flags.append("p99 down")
                if v["cpu"] > 0:
                    flags.append("CPU down")
            row["flags"] = flags
            row["regression"] = any(f.startswith("**") for f in flags)
            out.append(row)
    return out


def f_range(m, fmt):
    if not m:
        return "n/a"
    return f"{fmt(m['median'])} ({fmt(m['min'])}–{fmt(m['max'])})"


def f_us(v):
    return "n/a" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def ab_section(raw):
    ab = raw["ab"]
    new, label = ab["new"], ab["label"]
    rows_ = ab_rows(raw)
    sliced = raw["settings"].get("ab_slice", 0) > 0
    n = max(1, round(raw["settings"]["duration"] / raw["settings"]["ab_slice"])) if sliced else 1
    how = (f"Each config's two builds were up at once for every app in every repeat; each load was cut "
           f"into {n} slices of {raw['settings']['duration'] / n:g} s alternating between the builds "
           f"(A B B A ...), which build started alternating from repeat to repeat; req/s, CPU per request "
           f"and errors are those of the whole load, p99 the median of its slices' p99."
           if sliced else
           "Each config of the two builds ran back to back for every app in every repeat, which build went "
           "first alternating from repeat to repeat.")
    body = []
    for r in rows_:
        body.append([
            app_title(raw, r["app"]), MODE_LABEL[r["mode"]], r["config"],
            f_range(r["rps"]["old"], f_rps), f_range(r["rps"]["new"], f_rps), f_x(r["ratio"]),
            " ".join(f"{x:.2f}" for x in r["paired"]) or "n/a",
            f_range(r["p99"]["old"], f_ms), f_range(r["p99"]["new"], f_ms),
            f_range(r["cpu"]["old"], f_us), f_range(r["cpu"]["new"], f_us), f_x(r["cpu_ratio"]),
            " / ".join("n/a" if not r["others"][b] else f"{r['others'][b]['median']:.2f}"
                       for b in ("old", "new")),
            ", ".join(r["flags"]) or "within noise",
        ])
    ratios = [r["ratio"] for r in rows_ if r["ratio"]]
    paired = [x for r in rows_ for x in r["paired"]]
    cpu = [r["cpu_ratio"] for r in rows_ if r["cpu_ratio"]]
    flagged = [f"{r['app']} {MODE_LABEL[r['mode']]} {r['config']}" for r in rows_ if r["regression"]]
    summary = []
    if ratios:
        summary.append(f"Spread over the {len(rows_)} rows: median req/s new ÷ old {min(ratios):.3f}–"
                       f"{max(ratios):.3f}; per repeat (the two loads that ran back to back) "
                       f"{min(paired):.3f}–{max(paired):.3f}; CPU per request new ÷ old "
                       + (f"{min(cpu):.3f}–{max(cpu):.3f}." if cpu else "n/a."))
    others = [x for r in rows_ for b in ("old", "new") if r["others"][b] for x in [r["others"][b]["median"]]]
    if others:
        summary.append(f"Cores used by other work on the machine during the loads (median per cell): "
                       f"{min(others):.2f}–{max(others):.2f}.")
    summary.append("Regressions: " + ("; ".join(flagged) if flagged else "none (no row flagged)") + ".")
    return [
        f"## A/B: this tree vs @{label}",
        "",
        f"old = @{label}: ferricorn {ab.get('version') or '?'}, commit `{ab.get('commit') or '?'}`, "
        f"from `{ab['venv']}`; new = this tree: commit `{new.get('commit') or '?'}`, from "
        f"`{new.get('venv') or '?'}`. {how} Cells: median over repeats (min–max). 'per repeat' = new "
        f"÷ old req/s of the two loads of one repeat. CPU = "
        f"utime+stime of master and workers during the load ÷ requests (µs per request), median. "
        f"Others' cores: CPU the rest of the machine (other processes, the hypervisor's steal) used "
        f"during the loads ÷ their wall time: how much the samples were disturbed. "
        f"Verdict: a metric is flagged when the new median is worse than the old one by more than "
        f"{AB_THRESHOLD:.0%} **and** the min–max ranges of the two builds do not overlap (req/s: "
        f"'loss > {AB_THRESHOLD:.0%}'; p99: 'p99 up'; CPU per request: 'CPU up'); more errors than "
        f"the old build are always flagged; the same rule the other way round notes a gain.",
        "",
        table(["app", "mode", "config", "req/s old", "req/s new", "new ÷ old", "per repeat",
               "p99 ms old", "p99 ms new", "CPU µs/req old", "CPU µs/req new", "CPU new ÷ old",
               "others' cores old / new", "verdict"],
              body),
        "",
    ] + summary + [""]


# --------------------------------------------------------------------------- document


def render(raw):
    env = raw["environment"]
    v = env["versions"]
    extra = ", ".join(f"{name} {v[key]}" for key, name in (
        ("uvicorn", "uvicorn"), ("hypercorn", "hypercorn"), ("fastapi", "FastAPI"), ("starlette", "Starlette"),
        ("uvloop", "uvloop"), ("httptools", "httptools"), ("websockets", "websockets")) if v.get(key))
    parts = [
        f"# ferricorn benchmark — {raw['date']}",
        "",
        f"Machine: {env['cpus']} CPUs ({env['cpu_model']}), Linux {env['kernel']}, Python {env['python']}; "
        f"commit `{env['commit']}`. Versions: ferricorn {v['ferricorn'] or 'n/a'}, gunicorn {v['gunicorn']}, "
        f"granian {v['granian']}, Flask {v['flask']}" + (f", {extra}" if extra else "") + f", {env['wrk']}.",
        "",
        f"Run took {raw['elapsed_s'] / 60:.1f} min; 1-minute load average {env['loadavg_start']:.1f} at the "
        f"start, {env['loadavg_end']:.1f} at the end (the machine is shared: compare ratios, not absolutes).",
        "",
    ]
    if raw.get("tls"):
        parts += ["**Over TLS** (`--tls`): every server serves HTTPS with the same self-signed P-256 certificate "
                  "(`--certfile`/`--keyfile`, granian `--ssl-certificate`/`--ssl-keyfile`) and wrk speaks TLS; a "
                  "Connection: close row is full handshakes per second. The targets below are the plain-HTTP "
                  "ones, applied to these rows.", ""]
    if raw.get("ab"):
        parts += ab_section(raw)
    wsgi, asgi = subset(raw, "wsgi"), subset(raw, "asgi")
    if wsgi["apps"] and wsgi["servers"]:
        parts += wsgi_sections(wsgi)
    if asgi["apps"] and asgi["servers"]:
        parts += asgi_sections(asgi)
    notes = failures(raw)
    if notes:
        parts += ["## Not measured", ""] + notes + [""]
    return "\n".join(parts)


def wsgi_sections(raw):
    st = raw["settings"]
    threads = {a["name"]: a["threads"] for a in raw["apps"]}
    parts = [
        "# WSGI",
        "",
        f"Method: {st['repeats']} repeat(s), interleaved (every server runs each app once per repeat, the "
        f"server order rotating), medians shown. Each server start: first 200 → {st['settle']:g} s settle → "
        f"idle memory → {st['warmup']:g} s keep-alive warm-up → {st['duration']:g} s load per mode → memory "
        f"after. wrk -t1 -c64 (I/O row: -c256) --latency --timeout 5s, to 127.0.0.1 only. Servers: 2 workers; "
        f"threads 4 (I/O row: {threads.get('io', 32)}) for gunicorn gthread, ferricorn gthread (`--threads`) "
        f"and granian bt (`--blocking-threads`); plain granian keeps its default blocking threads.",
        "",
        "Cores the rest of the machine used during the loads (median per server, over all its loads): "
        + busy_summary(raw) + ".",
        "",
    ]
    parts += [
        "## Targets",
        "",
        targets(raw),
        "",
        "## Requests/s",
        "",
        per_server_table(raw, lambda s: f_rps(s["rps"])),
        "",
        "## Ratios: ferricorn ÷ peers (requests/s)",
        "",
        "\"best\" = the config of that server with the most requests/s in the row.",
        "",
        ratios_table(raw),
        "",
        "## Latency p50 / p99 (ms)",
        "",
        per_server_table(raw, lambda s: f"{f_ms(s['p50'])} / {f_ms(s['p99'])}"),
        "",
        "## Errors (wrk socket errors + non-2xx, summed over repeats)",
        "",
        per_server_table(raw, lambda s: str(s["errors"])),
        "",
        "## Connections left waiting (accept queue)",
        "",
        "Connections queued in the listener's accept queue, sampled 10×/s from the second second of each "
        "load on: median (max), median over repeats (max over repeats). wrk reports a connection that is "
        "never served neither as an error nor in its latencies. Queued connections are normal turn-taking "
        "under `Connection: close` and for gunicorn sync (which closes every connection); under keep-alive, "
        "a steady non-zero median means that many of wrk's connections were left unserved.",
        "",
        per_server_table(raw, f_queue),
        "",
        "## CPU and efficiency",
        "",
        "Cores = CPU time (utime+stime) of master and workers during the load ÷ its wall time. "
        "Efficiency = requests/s ÷ (Python ceiling × cores); the I/O row waits rather than computes, "
        "so it has none.",
        "",
        per_server_table(raw, lambda s: f"{s['cores']:.2f} cores" + (f", eff {f_eff(s['eff'])}"
                                                                     if s["eff"] is not None else "")),
        "",
        "### Python ceiling (the app alone, called in a loop in one process)",
        "",
        ceiling_table(raw),
        "",
        "## Memory (MiB, master + workers): idle RSS / PSS → after load RSS / PSS",
        "",
        memory_table(raw),
        "",
        f"### Growth: hello, {st['mem_loads']} × {st['mem_seconds']:g} s keep-alive loads",
        "",
        memtest_table(raw) if raw["memtest"] else "(not run)",
        "",
        "## Startup: spawn to first 200 (ms)",
        "",
        startup_table(raw),
        "",
    ]
    return parts


# --------------------------------------------------------------------------- ASGI

ASGI_PEERS = ("granian", "uvicorn", "gunicorn", "hypercorn")


def busy_summary(raw):
    """Per server: the median over all its loads of the cores the rest of the machine used."""
    parts = []
    for s in raw["servers"]:
        vals = [l["other_cores"] for r in raw["records"] if r["server"] == s["name"] and "error" not in r
                for l in r.get("loads", {}).values() if "other_cores" in l]
        if vals:
            parts.append(f"{s['label']} {statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})")
    return "; ".join(parts) or "n/a"


def asgi_ratios_table(raw):
    body = []
    for app, mode in rows(raw):
        _, f_st = best(raw, app, mode, "ferricorn")
        fr = f_st["rps"] if f_st else None
        cells = []
        for peer in ASGI_PEERS:
            _, p_st = best(raw, app, mode, peer)
            cells.append(f_x(ratio(fr, p_st and p_st["rps"])))
        body.append([app_title(raw, app), MODE_LABEL[mode], f_rps(fr)] + cells)
    return table(["app", "load", "ferricorn asgi req/s"] + [f"÷ best {p}" if p == "granian" else f"÷ {p}" for p in ASGI_PEERS], body)


def asgi_efficiency_table(raw):
    body = []
    for a in raw["apps"]:
        if not a.get("efficiency", True):
            continue
        c = raw["ceilings"].get(a["name"], {})
        if "error" in c:
            body.append([a["title"], "error: " + c["error"][:80]] + ["" for _ in raw["servers"]])
            continue
        cells = []
        for s in raw["servers"]:
            st = load_stats(raw, a["name"], "keepalive", s["name"])
            cells.append("n/a" if not st or st["eff_wall"] is None else
                         f"{st['eff_wall']:.2f} ({f_eff(st['eff'])}/core)")
        body.append([a["title"], f_rps(c.get("per_cpu_s"))] + cells)
    return table(["app (keep-alive)", "ceiling calls/s per CPU-s"] + server_header(raw), body)


def pathsend_note(raw):
    """Which servers took the pathsend path of the ASGI file app (the app's x-bench-path header)."""
    seen = {}
    for r in raw["records"]:
        if r["app"] == "asgi-file" and r.get("file_path"):
            seen.setdefault(r["server"], set()).add(r["file_path"])
    if not seen:
        return None
    labels = {s["name"]: s["label"] for s in raw["servers"]}
    return ("ASGI file row, how the body went out (the app's `x-bench-path`): "
            + "; ".join(f"{labels.get(k, k)}: {'/'.join(sorted(v))}" for k, v in seen.items())
            + " (`read` = the server does not advertise `http.response.pathsend`; the app reads the "
              "file and sends it as one body message).")


def asgi_p99(raw):
    parts, verdicts = [], []
    for app, mode in rows(raw):
        _, f = best(raw, app, mode, "ferricorn")
        _, g = best(raw, app, mode, "granian")
        if not f or not g:
            verdicts.append(None)
            continue
        verdicts.append(f["p99"] <= g["p99"])
        if f["p99"] > g["p99"]:
            parts.append(f"{app} {MODE_LABEL[mode]}: {f_ms(f['p99'])} > {f_ms(g['p99'])} ms")
    if not verdicts or None in verdicts:
        return ("; ".join(parts) or "n/a"), "n/a"
    return ("; ".join(parts) or "all rows within"), verdict(1, all(verdicts))


def asgi_idle_memory(raw):
    f = memory_stats(raw, "asgi-hello", "ferricorn-asgi")
    u = memory_stats(raw, "asgi-hello", "uvicorn")
    if not f or not u:
        return "n/a", "n/a"
    ok = f["idle_rss"] <= u["idle_rss"] and f["idle_pss"] <= u["idle_pss"]
    return (f"{f_mib(f['idle_rss'])}/{f_mib(f['idle_pss'])} vs {f_mib(u['idle_rss'])}/"
            f"{f_mib(u['idle_pss'])} MiB (RSS/PSS)"), verdict(1, ok)


def asgi_fastapi_efficiency(raw):
    _, f = best(raw, "fastapi", "keepalive", "ferricorn")
    c = raw["ceilings"].get("fastapi", {}).get("per_cpu_s")
    if not f or not c:
        return "n/a", "n/a"
    return (f"{f_rps(f['rps'])} req/s ÷ ceiling {f_rps(c)} calls/s = {f['eff_wall']:.2f} "
            f"({f_eff(f['eff'])} per core used)"), "reported"


def asgi_targets(raw):
    have = {a["name"]: a for a in raw["apps"]}
    out = []
    if "asgi-hello" in have:
        out.append(["raw hello keep-alive ≥ 1.3× best granian",
                    *target_ratio(raw, "asgi-hello", "keepalive", "granian", 1.3)])
    if "fastapi" in have:
        out.append(["FastAPI keep-alive ≥ 1.15× best granian", *target_ratio(raw, "fastapi", "keepalive", "granian", 1.15)])
        out.append(["FastAPI efficiency (req/s ÷ in-process ceiling)", *asgi_fastapi_efficiency(raw)])
    if "asgi-ws" in have:
        out.append(["websocket echo ≥ 1.2× best granian (16 and 256 clients)",
                    *target_rows_ratio(raw, [("asgi-ws", m) for m in have["asgi-ws"]["modes"]], "granian", 1.2)])
    if "asgi-sleep" in have:
        out.append(["10 ms sleep (c256) ≥ best granian", *target_ratio(raw, "asgi-sleep", "keepalive", "granian", 1.0)])
    raw_rows = [(a, m) for a, m in rows(raw) if a != "fastapi"]
    if raw_rows:
        out.append(["every raw-ASGI row ≥ 2× uvicorn", *target_rows_ratio(raw, raw_rows, "uvicorn", 2.0)])
    out.append(["p99 never above best granian's (same row, every row)", *asgi_p99(raw)])
    if "asgi-hello" in have:
        out.append(["idle memory (hello, master + 2 workers) ≤ uvicorn's, RSS and PSS", *asgi_idle_memory(raw)])
        out.append(["memory growth after 3 loads ≤ 10% (RSS and PSS)", *target_growth(raw)])
    return table(["target", "measured (ferricorn asgi ÷ peer)", "status"], out)


def asgi_sections(raw):
    st = raw["settings"]
    argv = "; ".join(f"{s['label']}: `{' '.join(s['argv'])}`" for s in raw["servers"])
    ws = next((a for a in raw["apps"] if a.get("ws_connections")), None)
    parts = [
        "# ASGI",
        "",
        f"Method: as for WSGI ({st['repeats']} repeat(s) interleaved, medians; {st['duration']:g} s loads; "
        f"wrk -t1 -c64, -c256 for the sleep row), every server with 2 workers. Command lines (bind and app "
        f"appended): {argv}."
        + (" Websocket rows: `bench/wsload` (Rust, one thread), N sessions each sending a 13-byte text "
           "message and awaiting its echo in a loop; messages/s stand in the req/s tables, round trips in "
           "the latency tables." if ws else ""),
        "",
        "Cores the rest of the machine used during the loads (median per server, over all its loads; "
        "min–max): " + busy_summary(raw) + ".",
        "",
        "## ASGI targets",
        "",
        asgi_targets(raw),
        "",
        "## ASGI requests/s (websocket rows: messages/s)",
        "",
        per_server_table(raw, lambda s: f_rps(s["rps"])),
        "",
        "## ASGI ratios: ferricorn asgi ÷ peers (requests/s)",
        "",
        asgi_ratios_table(raw),
        "",
        "## ASGI latency p50 / p99 (ms)",
        "",
        per_server_table(raw, lambda s: f"{f_ms(s['p50'])} / {f_ms(s['p99'])}"),
        "",
        "## ASGI errors (socket errors + non-2xx; websocket: failed connects + sessions that failed, summed)",
        "",
        per_server_table(raw, lambda s: str(s["errors"])),
        "",
        "## ASGI connections left waiting (accept queue, median (max))",
        "",
        per_server_table(raw, f_queue),
        "",
        "## ASGI CPU: cores used, and CPU time per request (µs)",
        "",
        "utime+stime of master and workers during the load ÷ wall time, and ÷ requests (messages).",
        "",
        per_server_table(raw, lambda s: f"{s['cores']:.2f} / "
                                        + ("n/a" if s["cpu_us"] is None else f"{s['cpu_us']:.1f} µs")),
        "",
        "## ASGI efficiency: requests/s ÷ the app's in-process ceiling",
        "",
        "Ceiling: the app awaited in a loop on one uvloop event loop in one process pinned to one core "
        "(prebuilt scope copied per call, body in one receive() message, send() dropping the body; no "
        "extensions, so the file app reads its file), calls per CPU-second. Cell: req/s ÷ ceiling "
        "(per core used: req/s ÷ (ceiling × cores)).",
        "",
        asgi_efficiency_table(raw),
        "",
    ]
    note = pathsend_note(raw)
    if note:
        parts += [note, ""]
    parts += [
        "## ASGI memory (MiB, master + workers): idle RSS / PSS → after load RSS / PSS",
        "",
        memory_table(raw),
        "",
        f"### ASGI growth: hello, {st['mem_loads']} × {st['mem_seconds']:g} s keep-alive loads",
        "",
        memtest_table(raw) if raw["memtest"] else "(not run)",
        "",
        "## ASGI startup: spawn to first 200 (ms)",
        "",
        startup_table(raw),
        "",
    ]
    return parts
