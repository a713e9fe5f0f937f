"""The crate's top-level modules form layers: each uses only modules of the layers below it.

A static check of the source (docs/architecture.md draws the same picture): starting from src/lib.rs,
every module file reachable through `mod x;` outside `#[cfg(test)]` is read with its comments, string
literals and `#[cfg(test)]` items removed, and each `crate::x` path (`use crate::{x, y}`, `super::`
chains that climb to the crate root) is an edge from the file's top-level module to `x`. A path to an
item of the crate root itself (`crate::configure`) is an edge to `lib`, which sits above every layer.

Fails when a cycle comes back, when a module uses one of its own layer or a higher one, or when a new
top-level module was not given a layer here.
"""

import os
import re

import pytest

pytestmark = pytest.mark.ferricorn_only  # ferricorn's own source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom first. A module may use the modules of the layers below its own, never its own layer's or a
# higher one's.
LAYERS = [
    # HTTP/1 as pure protocol code, and the settings: nothing of the server.
    ["http", "config"],
    # The error and access logs; the shared-memory scoreboard of master and workers; TLS material and
    # what a TLS connection tells the app (rustls, no server in it).
    ["log", "scoreboard", "tls"],
    # Unix service helpers (pidfile, privileges, systemd, reload, /proc/net/tcp); listening sockets;
    # the stack snapshots' shared area; what crosses between a worker's I/O side and an app runtime;
    # observability (statsd, the Prometheus and health listener, built on the scoreboard).
    ["system", "sock", "snapshot", "exchange", "metrics"],
    # The embedded interpreter: config file, hooks, app loading, stacks, fork.
    ["python"],
    # The self-pipe of master and workers; the control socket (its server side, ferricornctl, doctor).
    ["signals", "control"],
    # The app-runtime seam: the worker's shared context, the thread pool, per-request bookkeeping.
    ["runtime"],
    # App runtimes.
    ["wsgi", "asgi"],
    # A worker: I/O loop, connections, admission, Python threads.
    ["worker"],
    # The master.
    ["arbiter"],
]

# Edges known to be on their way out, each with the reason. The test fails as soon as one of them is
# gone, so that the entry is removed with it.
PENDING = set()

# The master knows nothing of HTTP or of the app protocols: it never uses these modules itself (it
# runs a worker after fork, and the worker does).
MASTER = "arbiter"
NOT_IN_MASTER = {"http", "exchange", "runtime", "wsgi", "asgi"}


def _strip(text):
    """`text` with comments removed and string and char literals emptied: braces or `crate::` inside
    them are not code."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
            continue
        after_ident = i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")
        raw = None if after_ident else RAW_STRING.match(text, i)
        if raw:
            end = '"' + raw.group(1)
            j = text.find(end, raw.end())
            i = n if j < 0 else j + len(end)
            out.append('""')
            continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
            continue
        if c == "'":
            # A char literal ('x', '{', '\'', '\u{7f}') or a lifetime ('a, 'static).
            if text.startswith("\\", i + 1):
                j = text.find("'", i + 3)
                i = n if j < 0 else j + 1
                out.append("' '")
                continue
            if text.startswith("'", i + 2):
                i += 3
                out.append("' '")
                continue
        out.append(c)
        i += 1
    return "".join(out)


RAW_STRING = re.compile(r'b?r(#*)"')
OPENING, CLOSING = "([{", ")]}"


def _item_end(code, start):
    """Index just past the item that starts at `start`: its `;` or its closing brace."""
    depth = 0
    for i in range(start, len(code)):
        c = code[i]
        if c in OPENING:
            depth += 1
        elif c in CLOSING:
            depth -= 1
            if depth == 0 and c == "}":
                return i + 1
        elif c == ";" and depth == 0:
            return i + 1
    return len(code)


CFG_TEST = re.compile(r"#\[cfg\(test\)\]")
ATTRIBUTE = re.compile(r"\s*#\[[^\]]*\]")


def _without_tests(code):
    """`code` without the items under `#[cfg(test)]`."""
    while True:
        m = CFG_TEST.search(code)
        if not m:
            return code
        start = m.end()
        while (a := ATTRIBUTE.match(code, start)) is not None:
            start = a.end()
        code = code[: m.start()] + code[_item_end(code, start) :]


MOD_DECL = re.compile(r"\bmod\s+(\w+)\s*;")
CRATE_ALIAS = re.compile(r"\bpub\s+use\s+(\w+)\s+as\s+(\w+)\s*;")


def _read(f):
    with open(f, encoding="utf-8") as fh:
        return _without_tests(_strip(fh.read()))


def _module_files(lib):
    """(module path, file, code) of every module file reachable from `lib` outside tests."""
    todo = [((), lib)]
    while todo:
        path, f = todo.pop()
        code = _read(f)
        yield path, f, code
        # Children of lib.rs and of a mod.rs sit beside them; those of `a.rs` in `a/`.
        if not path or os.path.basename(f) == "mod.rs":
            base = os.path.dirname(f)
        else:
            base = os.path.splitext(f)[0]
        for m in MOD_DECL.finditer(code):
            name = m.group(1)
            files = [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]
            found = [c for c in files if os.path.exists(c)]
            assert found, f"module {name} declared in {f} has no file"
            todo.append((path + (name,), found[0]))


def _group_heads(code, start):
    """First segment of each entry of the `{...}` group opening at `start`."""
    depth, entry = 0, []
    for i in range(start, len(code)):
        c = code[i]
        if c == "{":
            depth += 1
            if depth == 1:
                continue
        elif c == "}":
            depth -= 1
        if depth == 0 or (depth == 1 and c == ","):
            m = re.match(r"\s*(\w+)", "".join(entry))
            if m:
                yield m.group(1)
            entry = []
            if depth == 0:
                return
        else:
            entry.append(c)


def _roots_used(code, path):
    """First segment after the crate root of every path in `code`, from a file of module `path`."""
    for m in re.finditer(r"\bcrate::\{", code):
        yield from _group_heads(code, m.end() - 1)
    for m in re.finditer(r"\bcrate::(\w+)", code):
        yield m.group(1)
    # `super::super::x` climbing to the crate root.
    for m in re.finditer(r"(?<![\w:])((?:super::)+)(\{|\w+)", code):
        if m.group(1).count("super::") >= len(path):
            if m.group(2) == "{":
                yield from _group_heads(code, m.start(2))
            else:
                yield m.group(2)


def layer_graph(src):
    """The crate's top-level modules (`mod x;` and `pub use other_crate as x;` in lib.rs, outside
    tests) and {module: {module it uses: [files]}}; "lib" stands for the crate root's own items."""
    lib = os.path.join(src, "lib.rs")
    lib_code = _read(lib)
    top = {m.group(1) for m in MOD_DECL.finditer(lib_code)}
    top |= {m.group(2) for m in CRATE_ALIAS.finditer(lib_code)}
    edges = {m: {} for m in top}
    for path, f, code in _module_files(lib):
        if not path:
            continue
        for target in _roots_used(code, path):
            if target == "self":
                continue
            target = target if target in top else "lib"
            if target != path[0]:
                edges[path[0]].setdefault(target, []).append(os.path.relpath(f, src))
    return top, edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(src, layers=LAYERS, pending=PENDING):
    """Every way the crate in `src` breaks the layering, as lines of text (empty when it keeps it)."""
    top, edges = layer_graph(src)
    level = {m: i for i, layer in enumerate(layers) for m in layer}
    problems = []
    for m in sorted(top - set(level)):
        problems.append(f"module {m} has no layer in tests/test_layers.py")
    for m in sorted(set(level) - top):
        problems.append(f"layer entry {m} is not a module of the crate")
    for a, b in sorted(pending):
        if b not in edges.get(a, {}):
            problems.append(f"{a} -> {b} is gone: remove it from PENDING")
        else:
            del edges[a][b]
    for comp in cycles(edges):
        problems.append("cycle: " + ", ".join(comp))
    for a in sorted(edges):
        for b, files in sorted(edges[a].items()):
            where = ", ".join(sorted(set(files)))
            if b == "lib":
                problems.append(f"{a} uses the crate root (lib.rs), which is above every layer ({where})")
            elif a in level and b in level and level[b] >= level[a]:
                rel = "its own layer" if level[b] == level[a] else "a higher layer"
                problems.append(f"{a} -> {b}: {b} is in {rel} ({where})")
    for b in sorted(NOT_IN_MASTER & set(edges.get(MASTER, {}))):
        problems.append(f"the master ({MASTER}) uses {b}")
    return problems


def test_top_level_modules_form_the_declared_layers():
    problems = violations(os.path.join(REPO, "src"))
    assert not problems, "\n".join(problems)


def test_the_reader_sees_what_the_compiler_sees(tmp_path):
    """The checker itself: comments, strings and test code are not edges; `use crate::{..}` groups,
    `super::` chains to the root and the root's own items are."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "lib.rs").write_text(
        "pub mod a;\npub mod b;\n#[cfg(test)]\nmod only_tests;\npub use some_crate as c;\n"
        "pub fn helper() {}\n"
    )
    (src / "a" / "mod.rs").write_text(
        "//! Uses `crate::b` only in this comment.\nmod inner;\n"
        'const S: &str = "crate::b {";\nconst R: &str = r#"crate::b "}"#;\n'
        "fn f<'x>(c: char) -> bool { c == '{' || c == '\\'' }\n"
        "#[cfg(test)]\nmod tests { use crate::b; fn g() { let _ = '}'; } }\n"
    )
    (src / "a" / "inner.rs").write_text("use super::super::c::Thing;\n/* crate::b /* nested */ */\n")
    (src / "b.rs").write_text(
        "use crate::{a::{self, X}, c};\nfn h(x: [u8; 2]) { crate::helper(); }\n"
        "#[cfg(test)]\n#[allow(dead_code)]\nfn only(x: [u8; 2]) { crate::a::f(); }\n"
        "const T: &str = \"crate::a\";\n"
    )
    (src / "only_tests.rs").write_text("use crate::b;\n")
    top, edges = layer_graph(str(src))
    assert top == {"a", "b", "c"}
    assert edges["a"] == {"c": ["a/inner.rs"]}
    assert edges["b"] == {"a": ["b.rs"], "c": ["b.rs"], "lib": ["b.rs"]}
    assert violations(str(src), layers=[["c"], ["a"], ["b"]], pending=set()) == [
        "b uses the crate root (lib.rs), which is above every layer (b.rs)"
    ]
    assert violations(str(src), layers=[["c"], ["a", "b"]], pending={("b", "c")}) == [
        "b -> a: a is in its own layer (b.rs)",
        "b uses the crate root (lib.rs), which is above every layer (b.rs)",
    ]
    # A cycle, and a pending edge that is gone.
    (src / "a" / "inner.rs").write_text("use crate::b::h;\n")
    assert violations(str(src), layers=[["c"], ["a"], ["b"]], pending={("c", "a")}) == [
        "c -> a is gone: remove it from PENDING",
        "cycle: a, b",
        "a -> b: b is in a higher layer (a/inner.rs)",
        "b uses the crate root (lib.rs), which is above every layer (b.rs)",
    ]
    assert violations(str(src), layers=[["a"], ["b"]], pending={("a", "b")}) == [
        "module c has no layer in tests/test_layers.py",
        "b uses the crate root (lib.rs), which is above every layer (b.rs)",
    ]
