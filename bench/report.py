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


MIN_GOOD = 2  # good repeats a cell needs before a target reads it


def ok_records(raw, app, server):
    return [r for r in raw["records"] if r["app"] == app and r["server"] == server and "error" not in r]


def load_problem(load):
    """Why a measured load is not a good repeat (None: it is): any answer with status >= 400, any
    socket error (connect, read, write, timeout; websocket: failed connects and sessions), no answer."""
    probs = []
    if load.get("non2xx"):
        probs.append(f"{load['non2xx']} non-2xx")
    if load.get("socket_errors"):
        probs.append(f"{load['socket_errors']} socket errors")
    if not load.get("requests"):
        probs.append("no answers")
    return ", ".join(probs) or None


def server_info(raw, name):
    return next((s for s in raw["servers"] if s["name"] == name), {})


def cell_repeats(raw, app, mode, server):
    """Every planned repeat of one (app, mode, server) cell: {"repeat", "load" (None if there is
    none), "problem" (None for a good repeat)}. A repeat without a load is a failed one with the
    reason its record gives (the server did not start, wrk gave no result, ...) or "not run" when
    the server had been dropped. [] when the cell was never run (a server that was unavailable from
    the start, or does not run this app)."""
    recs = {r["repeat"]: r for r in raw["records"] if r["app"] == app and r["server"] == server}
    if not recs:
        return []
    dropped = server_info(raw, server).get("unavailable")
    out = []
    for k in range(1, max(raw["settings"]["repeats"], max(recs)) + 1):
        r = recs.get(k)
        load = r.get("loads", {}).get(mode) if r else None
        if load is not None:
            out.append({"repeat": k, "load": load, "problem": load_problem(load)})
        elif r is not None:
            out.append({"repeat": k, "load": None, "problem": r.get("error") or "not measured"})
        else:
            out.append({"repeat": k, "load": None,
                        "problem": "not run" + (f" (dropped: {dropped})" if dropped else "")})
    return out


def spread(values):
    """(median, min, max) of the values that are not None, or (None, None, None)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def load_stats(raw, app, mode, server):
    """One (app, mode, server) cell: medians over its good repeats (with min–max for requests/s and
    p99), how many repeats were good of how many planned, the failed ones with their reasons, and
    errors summed over every measured load, good or not. None when the cell was never run."""
    reps = cell_repeats(raw, app, mode, server)
    if not reps:
        return None
    loads = [r["load"] for r in reps if r["problem"] is None]
    measured = [r["load"] for r in reps if r["load"] is not None]
    ceiling = raw["ceilings"].get(app, {}).get("per_cpu_s")
    app_info = next(a for a in raw["apps"] if a["name"] == app)
    rps, rps_min, rps_max = spread(l["rps"] for l in loads)
    p99, p99_min, p99_max = spread(l["p99_ms"] for l in loads)
    eff = eff_wall = None
    if loads and ceiling and app_info.get("efficiency", app != "io"):
        eff = median(l["rps"] / (ceiling * l["cores"]) if l["cores"] else None for l in loads)
        eff_wall = rps / ceiling
    return {
        "rps": rps, "rps_min": rps_min, "rps_max": rps_max,
        "p50": median(l["p50_ms"] for l in loads),
        "p99": p99, "p99_min": p99_min, "p99_max": p99_max,
        "errors": sum(l["errors"] for l in measured),
        "socket_errors": sum(l.get("socket_errors", 0) for l in measured),
        "non2xx": sum(l.get("non2xx", 0) for l in measured),
        "cores": median(l["cores"] for l in loads),
        "queue": median(l["accept_queue"]["median"] for l in loads if "accept_queue" in l),
        "queue_max": max((l["accept_queue"]["max"] for l in loads if "accept_queue" in l), default=None),
        "eff": eff,
        "eff_wall": eff_wall,  # requests/s ÷ ceiling (not per core)
        "cpu_us": median(l.get("cpu_us_per_req") for l in loads),
        "good": len(loads),
        "n": len(reps),
        "failed": [(r["repeat"], r["problem"]) for r in reps if r["problem"] is not None],
        "connections": app_info["connections"],
    }


def sufficient(st):
    return bool(st) and st["good"] >= MIN_GOOD


def memory_stats(raw, app, server):
    recs = [r for r in ok_records(raw, app, server) if "idle" in r and "after" in r]
    if not recs:
        return None
    return {
        "idle_rss": median(r["idle"]["rss"] for r in recs),
        "idle_pss": median(r["idle"]["pss"] for r in recs),
        "after_rss": median(r["after"]["rss"] for r in recs),
        "after_pss": median(r["after"]["pss"] for r in recs),
        "procs": median(r["idle"]["procs"] for r in recs),
        "startup": median(r["startup_ms"] for r in recs),
        "good": len(recs),
    }


def rows(raw):
    return [(a["name"], mode) for a in raw["apps"] for mode in a["modes"]]


def family(raw, fam):
    """The configs of one server family; an A/B run's other build (`twin_of`) is not one of them:
    ratios and targets speak of this tree's build."""
    return [s["name"] for s in raw["servers"] if s["name"].startswith(fam) and not s.get("twin_of")]


def cells(raw, app, mode, fam):
    """[(server, stats)] of the family's configs that ran this row."""
    out = [(s, load_stats(raw, app, mode, s)) for s in family(raw, fam)]
    return [(s, st) for s, st in out if st]


def best(raw, app, mode, fam):
    """(server, stats) of the family's config with the highest median requests/s in this row."""
    cands = [(s, st) for s, st in cells(raw, app, mode, fam) if st["rps"] is not None]
    return max(cands, key=lambda c: c[1]["rps"]) if cands else (None, None)


def short_cells(raw, app, mode, fams):
    """The configs of these families whose cell in this row has fewer than MIN_GOOD good repeats
    ("name k/n"): while there is one, a target comparing the families' best configs is insufficient
    (the config that is short might be the best one)."""
    return [f"{s} {st['good']}/{st['n']}" for fam in fams for s, st in cells(raw, app, mode, fam)
            if not sufficient(st)]


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


def per_server_table(raw, cell, failed_too=False):
    """Rows = (app, mode), columns = servers; cell(stats) renders one cell that has a good repeat
    (or any cell, with failed_too); a cell without one reads "failed 0/n"."""
    body = []
    for app, mode in rows(raw):
        out = []
        for s in raw["servers"]:
            st = load_stats(raw, app, mode, s["name"])
            out.append("n/a" if not st else cell(st) if st["good"] or failed_too else f"failed 0/{st['n']}")
        body.append([app_title(raw, app), MODE_LABEL[mode]] + out)
    return table(["app", "mode"] + server_header(raw), body)


def short_reason(problem):
    """A failed repeat's reason, short enough for a table cell (the full one is under "Failed
    repeats")."""
    text = problem.split(" [log:")[0]
    return text if len(text) <= 40 else text[:38] + "…"


def f_good(st):
    """" 2/3" good repeats of planned, and which repeats failed and why."""
    out = f" {st['good']}/{st['n']}"
    if st["failed"]:
        out += " (" + "; ".join(f"r{k} failed: {short_reason(p)}" for k, p in st["failed"]) + ")"
    return out


def rps_cell(st):
    """Median requests/s of the good repeats, their min–max, good/planned and the failed repeats."""
    if st["good"] == 0:
        return "failed" + f_good(st)
    rng = f" ({f_rps(st['rps_min'])}–{f_rps(st['rps_max'])})" if st["good"] > 1 else ""
    return f_rps(st["rps"]) + rng + f_good(st)


def latency_cell(st):
    rng = f" ({f_ms(st['p99_min'])}–{f_ms(st['p99_max'])})" if st["good"] > 1 else ""
    return f"{f_ms(st['p50'])} / {f_ms(st['p99'])}{rng}"


def errors_cell(st):
    """Errors summed over every measured load of the cell, good repeats or not."""
    if not st["errors"]:
        return "0"
    parts = [f"{st['non2xx']} non-2xx" if st["non2xx"] else "",
             f"{st['socket_errors']} socket" if st["socket_errors"] else ""]
    return ", ".join(p for p in parts if p) or str(st["errors"])


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
            pair.append(ratio_cell(fs, gs))
        body.append([app_title(raw, app), MODE_LABEL[mode], f_name or "n/a", f_rps(fr),
                     ratio_cell(f_st, g_st), ratio_cell(f_st, u_st)] + pair)
    return table(["app", "mode", "best ferricorn", "req/s", "÷ best granian", "÷ best gunicorn",
                  "ferricorn sync ÷ gunicorn sync", "ferricorn gthread ÷ gunicorn gthread"], body)


def ratio_cell(a, b):
    """a ÷ b of two cells' median requests/s; † when either has fewer than MIN_GOOD good repeats."""
    r = ratio(a and a["rps"], b and b["rps"])
    return f_x(r) + (" †" if r is not None and not (sufficient(a) and sufficient(b)) else "")


RATIO_NOTE = f"† = one side has fewer than {MIN_GOOD} good repeats (a target does not read it)."


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
    """Servers not measured, and every failed repeat with its reason: a record that failed (the server
    did not start or answer, wrk or wsload gave no result), a load that had errors or non-2xx
    answers. None of them is in a median."""
    lines = []
    for s in raw["servers"]:
        if s["unavailable"]:
            lines.append(f"- **{s['label']}**: not available — {s['unavailable'][:400]}")
    for r in sorted((r for r in raw["records"] if "error" in r), key=lambda r: r["repeat"]):
        done = ", ".join(MODE_LABEL.get(m, m) for m in r.get("loads", {}))
        lines.append(f"- repeat {r['repeat']}, {r['server']} × {r['app']}: {r['error'][:400]}"
                     + (f" (measured before it: {done})" if done else ""))
    apps = {a["name"]: a for a in raw["apps"]}
    for r in sorted(raw["records"], key=lambda r: r["repeat"]):
        for mode, load in r.get("loads", {}).items():
            problem = load_problem(load)
            if problem and r["app"] in apps:
                lines.append(f"- repeat {r['repeat']}, {r['server']} × {r['app']} {MODE_LABEL.get(mode, mode)}: "
                             f"{problem} ({f_rps(load['rps'])} good answers/s; not in the medians)")
    return lines


# --------------------------------------------------------------------------- targets


def verdict(value, ok, short=()):
    """met / not met from the medians of good repeats; "insufficient" when a cell the target reads
    (`short`) has fewer than MIN_GOOD good repeats, so one noisy run can neither pass nor fail it."""
    if short:
        return "insufficient"
    if value is None:
        return "n/a"
    return "met" if ok else "**not met**"


def short_note(short):
    return f"; fewer than {MIN_GOOD} good repeats: {', '.join(short)}" if short else ""


def f_side(name, st):
    return f"{name} {f_rps(st['rps'])} {st['good']}/{st['n']}" if st else "n/a"


def compare_best(raw, app, mode, peer_fam):
    """Best ferricorn ÷ best `peer_fam` in one row: (ratio, what was compared, short cells)."""
    f_name, f = best(raw, app, mode, "ferricorn")
    p_name, p = best(raw, app, mode, peer_fam)
    r = ratio(f and f["rps"], p and p["rps"])
    text = f"{f_x(r)} ({f_side(f_name, f)} ÷ {f_side(p_name, p)})" if r is not None else "n/a"
    return r, text, short_cells(raw, app, mode, ("ferricorn", peer_fam))


def straddles(raw, app, mode, peer_fam, goal):
    """The ratio's range over the repeats when it straddles `goal`: the worst repeat of ferricorn's
    best config over the best repeat of the peer's, and the other way round. A verdict then rests on
    the medians alone; the report says so."""
    _, f = best(raw, app, mode, "ferricorn")
    _, p = best(raw, app, mode, peer_fam)
    if not (sufficient(f) and sufficient(p)) or not p["rps_min"]:
        return None
    lo, hi = f["rps_min"] / p["rps_max"], f["rps_max"] / p["rps_min"]
    return (lo, hi) if lo < goal <= hi else None


def spread_note(ranges):
    return (" (within the spread: " + "; ".join(f"{name}{lo:.2f}–{hi:.2f}×" for name, (lo, hi) in ranges)
            + ")") if ranges else ""


def target_ratio(raw, app, mode, peer_fam, goal):
    r, text, short = compare_best(raw, app, mode, peer_fam)
    rng = straddles(raw, app, mode, peer_fam, goal)
    status = verdict(r, r is not None and r >= goal, short)
    return text + short_note(short), status + (spread_note([("", rng)]) if rng and not short else "")


def target_rows_ratio(raw, apps_modes, peer_fam, goal):
    """One verdict over several rows: every row must reach `goal`."""
    parts, vals, shorts = [], [], []
    for app, mode in apps_modes:
        r, _, short = compare_best(raw, app, mode, peer_fam)
        vals.append(r)
        shorts += [f"{app} {MODE_LABEL[mode]}: {c}" for c in short]
        parts.append(f"{app} {MODE_LABEL[mode]} {f_x(r)}")
    if not vals or (None in vals and not shorts):
        return "; ".join(parts) or "n/a", "n/a"
    ok = None not in vals and all(v >= goal for v in vals)
    ranges = [(f"{app} ", rng) for app, mode in apps_modes
              for rng in [straddles(raw, app, mode, peer_fam, goal)] if rng]
    return ("; ".join(parts) + short_note(shorts),
            verdict(1, ok, shorts) + (spread_note(ranges) if ranges and not shorts else ""))


def target_sync_vs_gthread(raw):
    """hello keep-alive: ferricorn sync within 10% of ferricorn gthread (a user should not have to
    pick a worker class for speed)."""
    fs = load_stats(raw, "hello", "keepalive", "ferricorn-sync")
    fg = load_stats(raw, "hello", "keepalive", "ferricorn-gthread")
    if not fs or not fg:
        return "n/a", "n/a"
    r = ratio(fs["rps"], fg["rps"])
    short = [f"{n} {st['good']}/{st['n']}" for n, st in (("ferricorn-sync", fs), ("ferricorn-gthread", fg))
             if not sufficient(st)]
    text = f"{f_x(r)} ({f_side('sync', fs)} ÷ {f_side('gthread', fg)})" + short_note(short)
    return text, verdict(r, r is not None and r >= 0.9, short)


def target_efficiency(raw):
    _, f = best(raw, "flask", "keepalive", "ferricorn")
    e = f and f["eff"]
    short = short_cells(raw, "flask", "keepalive", ("ferricorn",))
    return ((f"{e:.2f}" if e is not None else "n/a") + short_note(short),
            verdict(e, e is not None and e >= 0.9, short))


def target_io(raw):
    fs = load_stats(raw, "io", "keepalive", "ferricorn-gthread")
    gs = load_stats(raw, "io", "keepalive", "gunicorn-gthread")
    r = ratio(fs and fs["rps"], gs and gs["rps"])
    errs = sum(st["errors"] for st in (load_stats(raw, "io", m, "ferricorn-gthread") for m in
                                        ("keepalive", "close")) if st)
    waiting = fs and fs["queue"]
    ok = r is not None and r >= 1.5 and errs == 0 and not waiting
    left = "n/a" if waiting is None else f"{waiting:g}"
    short = [f"{n} {st['good']}/{st['n']}" for n, st in (("ferricorn-gthread", fs), ("gunicorn-gthread", gs))
             if st and not sufficient(st)]
    text = (f"{f_x(r)}, ferricorn errors {errs}, keep-alive connections left waiting {left}" + short_note(short)
            if fs else "n/a")
    return text, verdict(r, ok, short)


def p99_target(raw, row_filter):
    """p99 of the best ferricorn ≤ p99 of the best granian in every row row_filter(app, mode) keeps."""
    parts, verdicts, shorts = [], [], []
    for app, mode in rows(raw):
        if not row_filter(app, mode):
            continue
        shorts += [f"{app} {MODE_LABEL[mode]}: {c}" for c in short_cells(raw, app, mode, ("ferricorn", "granian"))]
        _, f = best(raw, app, mode, "ferricorn")
        _, g = best(raw, app, mode, "granian")
        if not f or not g or f["p99"] is None or g["p99"] is None:
            verdicts.append(None)
            continue
        verdicts.append(f["p99"] <= g["p99"])
        if f["p99"] > g["p99"]:
            parts.append(f"{app} {MODE_LABEL[mode]}: {f_ms(f['p99'])} > {f_ms(g['p99'])} ms")
    if not verdicts or (None in verdicts and not shorts):
        return ("; ".join(parts) or "n/a"), "n/a"
    text = ("; ".join(parts) or ("all rows within" if None not in verdicts else "")) + short_note(shorts)
    return text.lstrip("; "), verdict(1, None not in verdicts and all(verdicts), shorts)


def target_p99(raw):
    conns = {a["name"]: a["connections"] for a in raw["apps"]}
    return p99_target(raw, lambda app, mode: conns[app] == 64)


def versus_gunicorn(raw, ok, describe):
    """A hello target that pairs ferricorn with gunicorn of the same worker class (sync, gthread):
    `ok(f, g)` and `describe(f, g)` take the two servers' memory_stats."""
    parts, oks, short = [], [], []
    for kind in ("sync", "gthread"):
        f = memory_stats(raw, "hello", f"ferricorn-{kind}")
        g = memory_stats(raw, "hello", f"gunicorn-{kind}")
        if not f or not g:
            oks.append(None)
            continue
        short += [f"{n}-{kind} {m['good']}" for n, m in (("ferricorn", f), ("gunicorn", g)) if m["good"] < MIN_GOOD]
        oks.append(ok(f, g))
        parts.append(f"{kind}: {describe(f, g)}")
    if None in oks:
        return "n/a", "n/a"
    return "; ".join(parts) + short_note(short), verdict(1, all(oks), short)


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
        out.append(["hello keep-alive: ferricorn sync ≥ 0.9× ferricorn gthread", *target_sync_vs_gthread(raw)])
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
    """{repeat: load} of the good repeats of one (app, mode, server) cell."""
    return {r["repeat"]: r["load"] for r in cell_repeats(raw, app, mode, server) if r["problem"] is None}


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
            stats = {b: load_stats(raw, app, mode, name) for b, name in (("old", old_name), ("new", new_name))}
            row["errors"] = {b: st["errors"] if st else 0 for b, st in stats.items()}  # every repeat, good or not
            row["good"] = {b: (st["good"], st["n"]) if st else (0, 0) for b, st in stats.items()}
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


def ab_good(row, build):
    """" 2/3 good" when a build's cell has failed repeats (they are in "Failed repeats")."""
    good, n = row["good"][build]
    return f" {good}/{n} good" if good < n else ""


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
            f_range(r["rps"]["old"], f_rps) + ab_good(r, "old"), f_range(r["rps"]["new"], f_rps) + ab_good(r, "new"),
            f_x(r["ratio"]),
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


# --------------------------------------------------------------------------- noise

CELL_NOTE = (f"A cell is the median over its good repeats; a repeat is good when its load ran and had no "
             f"socket error and no answer with status ≥ 400 (requests/s count the other answers only), and a "
             f"failed repeat is shown with its reason, never silently left out. A target reads only cells "
             f"with at least {MIN_GOOD} good repeats; otherwise it says \"insufficient\".")


def quiet_method(st):
    q = st.get("quiet")
    if not q:
        return "no wait for a quiet machine"
    if not q.get("bound"):
        return "no wait for a quiet machine (--quiet-wait 0)"
    return (f"wait until other work uses < {q['below']:g} cores over {q['window']:g} s (at most "
            f"{q['bound']:g} s)")


def all_loads(raw):
    """(record, mode, load) of every measured load, in the order they ran."""
    return [(r, mode, l) for r in raw["records"] for mode, l in r.get("loads", {}).items()]


def f_others(tops, limit=3):
    return ", ".join(f"{o['name']} {o['cores']:.2f}" for o in tops[:limit]) or "—"


def top_overall(loads, limit=5):
    """The busiest other processes over all loads: cores averaged over the loads' wall time."""
    total = sum(l.get("wall_s", 0) for _, _, l in loads)
    by_name = {}
    for _, _, l in loads:
        for o in l.get("others_top", []):
            by_name[o["name"]] = by_name.get(o["name"], 0.0) + o["cores"] * l.get("wall_s", 0)
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])[:limit]
    return [{"name": n, "cores": c / total} for n, c in ranked] if total else []


def noise_summary(raw):
    """One paragraph: how quiet the machine was before and during the loads."""
    loads = all_loads(raw)
    others = [l["other_cores"] for _, _, l in loads if "other_cores" in l]
    if not others:
        return None
    waits = [l["quiet"] for _, _, l in loads if l.get("quiet")]
    text = []
    if waits:
        quiet = [q for q in waits if q["quiet"]]
        waited = [q["waited_s"] for q in waits]
        text.append(f"{len(quiet)} of {len(waits)} loads started on a quiet machine; the wait took "
                    f"{statistics.median(waited):g} s (median, max {max(waited):g} s)"
                    + ("" if len(quiet) == len(waits) else
                       f", and {len(waits) - len(quiet)} started when the bound ran out"))
    else:
        text.append("no load waited for a quiet machine")
    med, lo, hi = spread(others)
    text.append(f"during the loads other work used {med:.2f} cores (median; {lo:.2f}–{hi:.2f})")
    steal = [l["steal_cores"] for _, _, l in loads if "steal_cores" in l]
    if steal and max(steal) >= 0.01:
        text.append(f"of which the hypervisor's steal {statistics.median(steal):.2f}")
    top = top_overall(loads)
    if top:
        text.append("busiest others: " + f_others(top, 5))
    busy = med >= 0.2
    return ("Machine noise: " + "; ".join(text) + "."
            + (" **The machine was busy: read ratios, not absolute numbers, and distrust differences "
               "within the min–max ranges.**" if busy else ""))


def noise_section(raw):
    """Per load: the wait for quiet before it and the other work during it (who used the CPU)."""
    loads = all_loads(raw)
    if not any("others_top" in l or "quiet" in l for _, _, l in loads):
        return []
    body = []
    for r, mode, l in loads:
        q = l.get("quiet")
        wait = ("—" if not q else f"quiet after {q['waited_s']:g} s" if q["quiet"] else
                f"not quiet after {q['waited_s']:g} s ({q['other_cores']:.2f} cores; {f_others(q.get('top', []))})")
        body.append([r["repeat"], r["app"], MODE_LABEL.get(mode, mode), r["server"], wait,
                     f"{l.get('other_cores', 0):.2f}", f"{l.get('steal_cores', 0):.2f}",
                     f_others(l.get("others_top", []))])
    return [
        "## Noise: the wait for quiet and the other work during each load",
        "",
        "In run order. Others' cores: CPU the whole machine used (`/proc/stat`, steal included) minus the "
        "server, wrk and the harness, ÷ the load's wall time. Busiest others: processes outside the harness "
        "(`/proc/<pid>/stat`, by command name), cores over the load (a process that exited during it is "
        "charged to its nearest ancestor still running); kernel threads such as `ksoftirqd` partly carry the "
        "load's own network work.",
        "",
        table(["repeat", "app", "mode", "server", "before the load", "others' cores", "steal",
               "busiest others during the load"], body),
        "",
    ]


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
    noise = noise_summary(raw)
    if noise:
        parts += [noise, ""]
    if raw.get("note"):
        parts += [raw["note"], ""]
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
        parts += ["## Failed repeats and servers not measured", ""] + notes + [""]
    parts += noise_section(raw)
    return "\n".join(parts)


def wsgi_sections(raw):
    st = raw["settings"]
    threads = {a["name"]: a["threads"] for a in raw["apps"]}
    parts = [
        "# WSGI",
        "",
        f"Method: {st['repeats']} repeat(s), interleaved (every server runs each app once per repeat, the "
        f"server and app orders rotating across the repeats). Each server start: first 200 → {st['settle']:g} s "
        f"settle → idle memory → {st['warmup']:g} s keep-alive warm-up → per mode: "
        + quiet_method(st) + f" → {st['duration']:g} s load; → memory "
        f"after. " + CELL_NOTE + " wrk -t1 -c64 (I/O row: -c256) --latency --timeout 5s, to 127.0.0.1 only. Servers: 2 workers; "
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
        "## Requests/s (2xx answers)",
        "",
        "Median of the good repeats (min–max), good repeats / repeats, and each failed repeat with its reason.",
        "",
        per_server_table(raw, rps_cell, failed_too=True),
        "",
        "## Ratios: ferricorn ÷ peers (requests/s)",
        "",
        "\"best\" = the config of that server with the most requests/s in the row. " + RATIO_NOTE,
        "",
        ratios_table(raw),
        "",
        "## Latency p50 / p99 (ms)",
        "",
        "Medians of the good repeats; in brackets the p99's min–max over them.",
        "",
        per_server_table(raw, latency_cell),
        "",
        "## Errors (wrk socket errors + non-2xx answers, summed over every repeat)",
        "",
        "Any error makes its repeat a failed one (not in the medians).",
        "",
        per_server_table(raw, errors_cell, failed_too=True),
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
            cells.append(ratio_cell(f_st, p_st))
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
    return p99_target(raw, lambda app, mode: True)


def asgi_idle_memory(raw):
    f = memory_stats(raw, "asgi-hello", "ferricorn-asgi")
    u = memory_stats(raw, "asgi-hello", "uvicorn")
    if not f or not u:
        return "n/a", "n/a"
    ok = f["idle_rss"] <= u["idle_rss"] and f["idle_pss"] <= u["idle_pss"]
    short = [f"{n} {m['good']}" for n, m in (("ferricorn-asgi", f), ("uvicorn", u)) if m["good"] < MIN_GOOD]
    return (f"{f_mib(f['idle_rss'])}/{f_mib(f['idle_pss'])} vs {f_mib(u['idle_rss'])}/"
            f"{f_mib(u['idle_pss'])} MiB (RSS/PSS)" + short_note(short)), verdict(1, ok, short)


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
        f"Method: as for WSGI ({st['repeats']} repeat(s) interleaved, server and app orders rotating; "
        f"medians of the good repeats; {quiet_method(st)}; {st['duration']:g} s loads; "
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
        "## ASGI requests/s (2xx answers; websocket rows: messages/s)",
        "",
        CELL_NOTE,
        "",
        per_server_table(raw, rps_cell, failed_too=True),
        "",
        "## ASGI ratios: ferricorn asgi ÷ peers (requests/s)",
        "",
        RATIO_NOTE,
        "",
        asgi_ratios_table(raw),
        "",
        "## ASGI latency p50 / p99 (ms; p99 min–max over the good repeats)",
        "",
        per_server_table(raw, latency_cell),
        "",
        "## ASGI errors (socket errors + non-2xx; websocket: failed connects + sessions that failed; summed "
        "over every repeat, and any error fails its repeat)",
        "",
        per_server_table(raw, errors_cell, failed_too=True),
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
