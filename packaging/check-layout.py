#!/usr/bin/env python3
"""The layout rules of handler/ (docs/ARCHITECTURE.md), checked:

1. no import cycle between modules (a module is one .rs file; a folder's mod.rs is the
   folder's module), test code excluded;
2. the pure modules import no effectful one;
3. no file over 500 lines outside tests without a `//! Long because: ...` line at its top;
4. no function of 80 lines or more (tests excluded);
5. no pointer to a document that is not in the repository: DESIGN.md, DOMAIN.md or
   PROTOCOL.md may be named only as docs/<NAME> of a file that exists.

Prints each violation and exits 1 if there is one; `--graph` prints the module graph;
`--report-only KIND,...` (KIND: cycle, pure, file, function, docs) prints those kinds without
failing on them.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "handler")

# Modules that compute from values only: no files, processes, clocks or network.
PURE = [
    "plan", "plan::catalog", "plan::recipe", "plan::stage", "plan::distro",
    "host::os_release", "stages::verify::evaluate",
    "error", "cli", "net::url",
]
# Modules that act on the world; a pure module may not import them.
EFFECTFUL_PREFIXES = ["sys", "net", "engine", "verbs", "stages"]
EFFECTFUL_EXCEPT = ["sys::clock::Deadline", "net::url"]

MAX_FILE_LINES = 500
MAX_FN_LINES = 80


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return "::".join(rel) if rel else "crate"


def sources():
    for d, _, files in os.walk(SRC):
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(d, f)


def strip_tests(text):
    """The file without its `#[cfg(test)]` module (always last, by our style)."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests", text, re.M)
    return text[: m.start()] if m else text


# One pass over the text, so that `//` inside a string is no comment and a quote inside a
# comment no string: raw strings, ordinary strings (an escape may be a backslash-newline),
# char literals holding a quote, and line comments.
TOKENS = re.compile(
    r'r(#*)"[\s\S]*?"\1'
    r'|"(?:\\[\s\S]|[^"\\])*"'
    r"|'(?:\\.|[^'\\])'"
    r"|//[^\n]*"
)


def strip_comments(text):
    """The text with comments removed and every string literal emptied."""
    return TOKENS.sub(lambda m: "" if m.group(0).startswith("//") else '""', text)


def expand_groups(code):
    """`use a::{b, c::{d, e}}` -> paths a::b, a::c::d, a::c::e (enough for our style)."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        stack = [m.group(1).replace("\n", " ")]
        while stack:
            p = stack.pop()
            g = re.match(r"^(.*?)\{(.*)\}\s*$", p.strip())
            if not g:
                paths.append(p.strip().split(" as ")[0].strip())
                continue
            prefix, inner = g.group(1), g.group(2)
            depth, cur, parts = 0, "", []
            for ch in inner:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                if ch == "," and depth == 0:
                    parts.append(cur)
                    cur = ""
                else:
                    cur += ch
            parts.append(cur)
            stack.extend(prefix + q.strip() for q in parts if q.strip())
    return paths


def references(code, me, modules):
    """Modules `me` refers to, by `crate::`/`super::` paths in uses and in code."""
    refs = set()
    paths = expand_groups(code)
    paths += re.findall(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", code)
    # A child module named by its bare name (`mod ipoib;` then `ipoib::netdevs`).
    for child in re.findall(r"(?<![:\w])([a-z_][a-z0-9_]*)::", code):
        if f"{me}::{child}" in modules if me != "crate" else child in modules:
            paths.append(f"crate::{me}::{child}" if me != "crate" else f"crate::{child}")
    for p in paths:
        p = p.replace("self", "").rstrip(":")
        parts = [x for x in p.split("::") if x]
        if not parts:
            continue
        if parts[0] == "crate":
            parts = parts[1:]
        elif parts[0] == "super":
            base = me.split("::")
            while parts and parts[0] == "super":
                base = base[:-1]
                parts = parts[1:]
            parts = base + parts
        else:
            continue
        # The longest prefix that is a module.
        for n in range(len(parts), 0, -1):
            cand = "::".join(parts[:n])
            if cand in modules:
                if cand != me:
                    refs.add(cand)
                break
    return refs


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def long_functions(path, text):
    """(name, first line, length) of functions of MAX_FN_LINES lines or more."""
    lines = text.split("\n")
    found = []
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?(?:const\s+)?(?:unsafe\s+)?fn\s+(\w+)", lines[i])
        if not m:
            i += 1
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            code = strip_comments(lines[j])
            depth += code.count("{") - code.count("}")
            if "{" in code:
                started = True
            if started and depth <= 0:
                break
            if not started and code.rstrip().endswith(";"):
                break
            j += 1
        length = j - i + 1
        if started and length >= MAX_FN_LINES:
            found.append((m.group(1), i + 1, length))
        i = j + 1 if started else i + 1
    return found


class Problems:
    def __init__(self):
        self.items = []

    def append(self, kind, text):
        self.items.append((kind, text))


def main():
    files = list(sources())
    modules = {module_of(f): f for f in files}
    graph = {}
    problems = Problems()
    for mod, f in modules.items():
        text = open(f, encoding="utf-8").read()
        body = strip_tests(text)
        code = strip_comments(body)
        graph[mod] = references(code, mod, modules)
        rel = os.path.relpath(f, ROOT)
        n = body.count("\n")
        head = "\n".join(text.split("\n")[:12])
        if n > MAX_FILE_LINES and "//! Long because:" not in head:
            problems.append("file", f"{rel}: {n} lines outside tests and no '//! Long because:' line at its top")
        for name, line, length in long_functions(f, body):
            problems.append("function", f"{rel}:{line}: fn {name} is {length} lines (limit {MAX_FN_LINES - 1})")
    for comp in cycles(graph):
        problems.append("cycle", "import cycle: " + " <-> ".join(comp))
    for mod in PURE:
        if mod not in modules:
            problems.append("pure", f"pure module {mod} is listed here but does not exist")
        for dep in sorted(graph.get(mod, ())):
            if any(dep == p or dep.startswith(p + "::") for p in EFFECTFUL_PREFIXES):
                if not any(e.startswith(dep) for e in EFFECTFUL_EXCEPT):
                    problems.append("pure", f"pure module {mod} imports effectful {dep}")
    docs_dir = os.path.join(ROOT, "docs")
    for d, dirs, fs in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x not in (".git", "target", "dist", "docs")]
        for fn in fs:
            if fn == "check-layout.py":
                continue
            if not fn.endswith((".rs", ".md", ".sh", ".py", ".toml", ".json", ".xml")):
                continue
            p = os.path.join(d, fn)
            try:
                text = open(p, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            for m in re.finditer(r"(\S*?)\b(DESIGN|DOMAIN|PROTOCOL)\.md", text):
                name = m.group(2) + ".md"
                prefix = m.group(1)
                ok = prefix.endswith("docs/") and os.path.exists(os.path.join(docs_dir, name))
                if not ok:
                    line = text[: m.start()].count("\n") + 1
                    problems.append("docs", f"{os.path.relpath(p, ROOT)}:{line}: names {prefix}{name}, not a docs/ file")
    if "--graph" in sys.argv:
        for mod in sorted(graph):
            print(f"{mod}: {' '.join(sorted(graph[mod]))}")
    report_only = set()
    if "--report-only" in sys.argv:
        report_only = set(sys.argv[sys.argv.index("--report-only") + 1].split(","))
    failing = 0
    for kind, text in problems.items:
        fails = kind not in report_only
        failing += fails
        print(("" if fails else "(reported) ") + text)
    print(
        f"check-layout: {len(modules)} modules, {sum(len(v) for v in graph.values())} imports, "
        f"{len(problems.items)} problems, {failing} failing"
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
