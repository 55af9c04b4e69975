#!/usr/bin/env python3
"""Generates the Julia binding's C layer (bindings/julia/src/capi.jl) from include/gacc.h.

capi.jl is module `LibGacc`: every #define and enum value as a `const`, every struct
as an isbits mirror with the header's fields in the header's order (gacc_step_info ->
StepInfo), and one Julia function per C function, named like it, whose `ccall` has the
exact Julia types of the prototype. The high-level binding (Gacc.jl) includes it and
calls `LibGacc.gacc_*` only; it has no `ccall` of its own. So the C layer cannot drift
from the header: it is regenerated from it, and `--check` fails when the committed file
differs from what the current header gives.

Usage:
  gen_julia_ccalls.py              # write bindings/julia/src/capi.jl
  gen_julia_ccalls.py --check      # capi.jl is what the header gives; Gacc.jl has no ccall
                                   # and calls every C function through LibGacc
  gen_julia_ccalls.py --self-test  # --check passes on the real files and fails on mutations
  gen_julia_ccalls.py --syntax     # parse the package's .jl files with tree-sitter-julia
                                   # (optional: pip install tree-sitter tree-sitter-julia)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "include", "gacc.h")
JULIA_SRC = os.path.join(ROOT, "bindings", "julia", "src")
CAPI = os.path.join(JULIA_SRC, "capi.jl")
GACC_JL = os.path.join(JULIA_SRC, "Gacc.jl")
RUNTESTS = os.path.join(ROOT, "bindings", "julia", "test", "runtests.jl")

# C scalar -> Julia type. Explicit: a C type missing here stops the generator.
SCALARS = {
    "void": "Cvoid",
    "char": "UInt8",
    "uint8_t": "UInt8",
    "int32_t": "Int32",
    "uint32_t": "UInt32",
    "int64_t": "Int64",
    "uint64_t": "UInt64",
    "size_t": "Csize_t",
    "float": "Cfloat",
    "double": "Cdouble",
    "int": "Cint",
}
# The Julia type of a #define, by name prefix (the type of the struct fields and
# parameters it is meant for); other numeric defines are plain Julia integers.
DEFINE_TYPES = [
    ("GACC_DEVICE_", "Int32"),
    ("GACC_DTYPE_", "UInt32"),
    ("GACC_OPTIMIZER_", "UInt32"),
    ("GACC_PRECISION_", "UInt32"),
    ("GACC_GRADS_", "UInt32"),
    ("GACC_LOSS_SCALE_", "UInt32"),
]
JULIA_KEYWORDS = {"begin", "end", "function", "type", "module", "struct", "global", "local", "let", "do",
                  "for", "while", "if", "else", "try", "catch", "quote", "macro", "return", "const", "in"}


def julia_struct_name(c_name: str) -> str:
    """gacc_step_info -> StepInfo (the naming rule for struct mirrors)."""
    stem = c_name[len("gacc_"):] if c_name.startswith("gacc_") else c_name
    return "".join(part[:1].upper() + part[1:] for part in stem.split("_") if part)


# --------------------------------------------------------------------------------------
# C header

@dataclass
class CType:
    base: str       # without const/struct/enum
    depth: int      # number of '*'
    text: str       # as written
    array: int = 0  # N for a fixed-size array field `T name[N]` (Julia: NTuple{N, T})


@dataclass
class CFunction:
    name: str
    ret: CType
    params: list[tuple[CType, str]]


@dataclass
class Header:
    defines: dict[str, object] = field(default_factory=dict)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)        # enum -> {variant: value}
    structs: dict[str, list[tuple[CType, str]]] = field(default_factory=dict)
    opaque: set[str] = field(default_factory=set)
    fnptrs: set[str] = field(default_factory=set)                         # function-pointer typedefs
    functions: dict[str, CFunction] = field(default_factory=dict)


def strip_c_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_ctype(text: str) -> CType:
    t = text.strip()
    depth = t.count("*")
    words = [w for w in re.split(r"[\s*]+", t) if w and w not in ("const", "struct", "enum", "volatile")]
    if len(words) == 2 and words == ["unsigned", "int"]:
        words = ["unsigned"]
    if len(words) != 1:
        raise ValueError(f"cannot parse C type {text!r}")
    return CType(words[0], depth, " ".join(t.split()))


def parse_param(text: str) -> tuple[CType, str]:
    arr = re.match(r"^(.*?\w)\s*\[\s*(\d+)\s*\]\s*$", text.strip(), flags=re.S)
    if arr:
        ct, name = parse_param(arr.group(1))
        return CType(ct.base, ct.depth, f"{ct.text}[{arr.group(2)}]", int(arr.group(2))), name
    m = re.match(r"^(.*?)(\w+)\s*$", text.strip(), flags=re.S)
    if not m or not m.group(1).strip():
        raise ValueError(f"cannot parse parameter {text!r} (unnamed parameters are not supported)")
    return parse_ctype(m.group(1)), m.group(2)


def _eval_arith(text: str) -> int | float | None:
    """Evaluates a constant arithmetic expression (numbers, + - * << >> | & ^ ~, parentheses)."""
    import ast

    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    binops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
              ast.BitOr: lambda a, b: a | b, ast.BitAnd: lambda a, b: a & b, ast.BitXor: lambda a, b: a ^ b}
    unops = {ast.USub: lambda a: -a, ast.UAdd: lambda a: +a, ast.Invert: lambda a: ~a}

    def ev(n):
        if isinstance(n, ast.Constant) and type(n.value) in (int, float):
            return n.value
        if isinstance(n, ast.UnaryOp) and type(n.op) in unops:
            return unops[type(n.op)](ev(n.operand))
        if isinstance(n, ast.BinOp) and type(n.op) in binops:
            return binops[type(n.op)](ev(n.left), ev(n.right))
        raise ValueError(ast.dump(n))

    try:
        return ev(node)
    except (ValueError, TypeError):
        return None


def parse_c_number(text: str) -> int | float | None:
    """A C constant expression as cbindgen writes #define values: 3, -2, 0x10u, (1 << 4),
    1.5f, 1e-3, (uint32_t)7."""
    t = re.sub(r"\(\s*(?:const\s+)?(?:u?int(?:8|16|32|64)_t|int|unsigned|long|size_t|float|double)\s*\)", "", text)
    t = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", t)
    t = re.sub(r"(\d(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]\b", r"\1", t)
    return _eval_arith(t)


def parse_int(text: str) -> int | None:
    v = parse_c_number(text)
    return v if isinstance(v, int) else None


def parse_header(text: str) -> Header:
    h = Header()
    guard = None
    for m in re.finditer(r"^\s*#\s*ifndef\s+(\w+)", text, flags=re.M):
        guard = m.group(1)
        break
    for m in re.finditer(r"^\s*#\s*define\s+(\w+)(?:[ \t]+(.*?))?\s*$", text, flags=re.M):
        name, value = m.group(1), (m.group(2) or "").strip()
        if name == guard and not value:
            continue
        if not value:
            raise ValueError(f"#define {name} has no value")
        if value.startswith('"') and value.endswith('"'):
            h.defines[name] = value[1:-1]
        else:
            v = parse_c_number(value)
            if v is None:
                raise ValueError(f"#define {name} {value}: not a number or string constant "
                                 "(extend parse_c_number in scripts/gen_julia_ccalls.py)")
            h.defines[name] = v

    code = strip_c_comments(text)
    code = re.sub(r"^\s*#.*$", "", code, flags=re.M)
    # The C++ guard: `extern "C" {` and its closing brace, alone on a line once the
    # comments are gone.
    code = re.sub(r'extern\s+"C"\s*\{', "", code)
    code = re.sub(r"^\s*\}\s*$", "", code, flags=re.M)

    for m in re.finditer(r"typedef\s+enum\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", code, flags=re.S):
        values, nxt = {}, 0
        for item in [i.strip() for i in m.group(2).split(",") if i.strip()]:
            if "=" in item:
                k, v = [p.strip() for p in item.split("=", 1)]
                iv = parse_int(v)
                if iv is None:
                    raise ValueError(f"enum {m.group(1)}: cannot evaluate {item!r}")
                nxt = iv
            else:
                k = item
            values[k] = nxt
            nxt += 1
        h.enums[m.group(3)] = values
    code = re.sub(r"typedef\s+enum\s+\w+\s*\{.*?\}\s*\w+\s*;", "", code, flags=re.S)

    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", code, flags=re.S):
        fields = []
        for decl in [d.strip() for d in m.group(2).split(";") if d.strip()]:
            fields.append(parse_param(decl))
        h.structs[m.group(3)] = fields
    code = re.sub(r"typedef\s+struct\s+\w+\s*\{.*?\}\s*\w+\s*;", "", code, flags=re.S)

    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s+(\w+)\s*;", code):
        h.opaque.add(m.group(2))
    code = re.sub(r"typedef\s+struct\s+\w+\s+\w+\s*;", "", code)

    for m in re.finditer(r"typedef\s+[^;()]*\(\s*\*\s*(\w+)\s*\)\s*\([^;]*\)\s*;", code):
        h.fnptrs.add(m.group(1))
    code = re.sub(r"typedef\s+[^;()]*\(\s*\*\s*\w+\s*\)\s*\([^;]*\)\s*;", "", code)

    leftover_typedef = re.search(r"typedef[^;]*;", code)
    if leftover_typedef:
        raise ValueError(f"unsupported typedef in header: {' '.join(leftover_typedef.group(0).split())}")

    for m in re.finditer(r"([A-Za-z_][\w\s\*]*?)\b(\w+)\s*\(([^()]*)\)\s*;", code):
        ret, name, params = m.group(1), m.group(2), m.group(3).strip()
        plist = [] if params in ("", "void") else [parse_param(p) for p in params.split(",")]
        h.functions[name] = CFunction(name, parse_ctype(ret), plist)
    rest = re.sub(r"([A-Za-z_][\w\s\*]*?)\b(\w+)\s*\(([^()]*)\)\s*;", "", code)
    if rest.strip():
        raise ValueError(f"unparsed text left in the header: {' '.join(rest.split())[:200]!r}")
    return h


# --------------------------------------------------------------------------------------
# Julia

def julia_type(ct: CType, h: Header, *, in_struct: bool) -> str:
    """The exact Julia type of a C type: `const char*` is Cstring in a call (Ptr{UInt8} in
    a struct, where Julia builds it from pointer(::String)), the opaque engine and
    function pointers are Ptr{Cvoid}, enums are Cint."""
    base, depth = ct.base, ct.depth
    if base in h.fnptrs:
        inner = "Ptr{Cvoid}"
    elif base in h.opaque:
        if depth == 0:
            raise ValueError(f"opaque {base} by value")
        inner, depth = "Ptr{Cvoid}", depth - 1
    elif base in h.enums:
        inner = "Cint"
    elif base in h.structs:
        inner = julia_struct_name(base)
    elif base == "char" and depth == 1 and not in_struct:
        return "Cstring"
    elif base in SCALARS:
        inner = SCALARS[base]
    else:
        raise ValueError(f"no Julia type for C type {ct.text!r} (extend SCALARS in scripts/gen_julia_ccalls.py)")
    for _ in range(depth):
        inner = f"Ptr{{{inner}}}"
    if ct.array:
        inner = f"NTuple{{{ct.array}, {inner}}}"
    return inner


def julia_value(name: str, value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'
    if isinstance(value, float):
        return f"{value!r}"
    for prefix, jt in DEFINE_TYPES:
        if name.startswith(prefix):
            return f"{jt}({value})"
    return str(value)


def generate(header_text: str) -> str:
    h = parse_header(header_text)
    out = [
        "# Generated by scripts/gen_julia_ccalls.py from include/gacc.h. Do not edit:",
        "# change the header (src/, then cbindgen) and rerun the script.",
        "",
        '"The C layer of Gacc: constants, struct mirrors and one function per C function of gacc.h."',
        "module LibGacc",
        "",
        "using Libdl",
        "",
        '# ENV["GACC_LIB"] when set (read when the package is loaded/precompiled), else the',
        "# source tree's target/release/libgacc, else libgacc from the system's search path.",
        'const libgacc = let p = get(ENV, "GACC_LIB", "")',
        "    if !isempty(p)",
        "        p",
        "    else",
        '        tree = normpath(joinpath(@__DIR__, "..", "..", "..", "target", "release", "libgacc." * Libdl.dlext))',
        '        isfile(tree) ? tree : "libgacc"',
        "    end",
        "end",
        "",
        "# #defines",
    ]
    exported = []
    for name, value in h.defines.items():
        if not name.startswith("GACC_"):
            continue  # not part of the API (an internal constant cbindgen let through)
        out.append(f"const {name} = {julia_value(name, value)}")
        exported.append(name)
    for enum, values in h.enums.items():
        out += ["", f"# enum {enum} (a C int)"]
        for name, value in values.items():
            out.append(f"const {name} = Cint({value})")
            exported.append(name)
    for c_name, fields in h.structs.items():
        jname = julia_struct_name(c_name)
        out += ["", f'"Mirror of `{c_name}` (isbits: the layout is C\'s)."', f"struct {jname}"]
        for ct, fname in fields:
            out.append(f"    {fname}::{julia_type(ct, h, in_struct=True)}")
        out.append("end")
        exported.append(jname)
    out += ["", "# One function per C function: the C name, the C parameter names, the exact types."]
    for f in h.functions.values():
        names = [n + "_" if n in JULIA_KEYWORDS else n for _, n in f.params]
        types = [julia_type(ct, h, in_struct=False) for ct, _ in f.params]
        tuple_text = "(" + ", ".join(types) + ("," if len(types) == 1 else "") + ")"
        args = "".join(", " + n for n in names)
        out.append(f"{f.name}({', '.join(names)}) =")
        out.append(f"    ccall((:{f.name}, libgacc), {julia_type(f.ret, h, in_struct=False)}, {tuple_text}{args})")
    out += [""]
    line = "export"
    for i, name in enumerate(exported):
        item = f" {name}" + ("," if i + 1 < len(exported) else "")
        if len(line) + len(item) > 100:
            out.append(line)
            line = "      "
        line += item
    out += [line, "", "end # module", ""]
    return "\n".join(out)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def check(header_text: str, capi_text: str, gacc_text: str) -> list[str]:
    """What is wrong: a stale capi.jl, a ccall in Gacc.jl, a C function Gacc.jl never calls."""
    problems = []
    if capi_text != generate(header_text):
        problems.append("capi.jl differs from what include/gacc.h gives: run scripts/gen_julia_ccalls.py")
    code = re.sub(r'"""(?:.|\n)*?"""|#[^\n]*', "", gacc_text)
    if re.search(r"\bccall\s*\(", code):
        problems.append("Gacc.jl has a ccall of its own: call the LibGacc function instead")
    for name in parse_header(header_text).functions:
        if name != "gacc_config_init" and not re.search(rf"\bLibGacc\.{name}\s*\(", code):
            problems.append(f"Gacc.jl never calls LibGacc.{name}: wrap it")
    return problems


# (what, file, old text, new text, a fragment of the expected problem)
MUTATIONS = [
    ("parameter type changed", "h", "gacc_set_lr(struct gacc_engine *e, float lr)",
     "gacc_set_lr(struct gacc_engine *e, double lr)", "capi.jl differs"),
    ("function added", "h", "enum gacc_status gacc_zero(struct gacc_engine *e);",
     "enum gacc_status gacc_zero(struct gacc_engine *e);\nenum gacc_status gacc_new(struct gacc_engine *e);",
     "capi.jl differs"),
    ("struct field added", "h", "  uint32_t loss_scale_policy;\n", "  uint32_t loss_scale_policy;\n  float extra;\n",
     "capi.jl differs"),
    ("constant changed", "h", "#define GACC_ABI_VERSION 2", "#define GACC_ABI_VERSION 3", "capi.jl differs"),
    ("capi.jl edited by hand", "c", "Csize_t", "UInt64", "capi.jl differs"),
    ("raw ccall in Gacc.jl", "j", "LibGacc.gacc_zero(handle(e))", "ccall((:gacc_zero, libgacc), Cint, (Ptr{Cvoid},), handle(e))",
     "ccall of its own"),
    ("function not wrapped", "j", "LibGacc.gacc_comm_stats(", "gacc_comm_stats(", "never calls LibGacc.gacc_comm_stats"),
]


def self_test() -> int:
    files = {"h": read(HEADER), "c": read(CAPI), "j": read(GACC_JL)}
    base = check(files["h"], files["c"], files["j"])
    if base:
        print("self-test: the real files must pass first: " + "; ".join(base))
        return 1
    failures = 0
    for what, which, old, new, fragment in MUTATIONS:
        if old not in files[which]:
            print(f"self-test: FAIL {what}: text to mutate not found (update MUTATIONS): {old!r}")
            failures += 1
            continue
        m = dict(files)
        m[which] = m[which].replace(old, new, 1)
        problems = check(m["h"], m["c"], m["j"])
        hit = [p for p in problems if fragment in p]
        print(f"self-test: {'ok  ' if hit else 'FAIL'} {what}: {hit[0] if hit else problems}")
        failures += not hit
    print(f"self-test: {len(MUTATIONS) - failures}/{len(MUTATIONS)} mutations detected")
    return 1 if failures else 0


def syntax_check(paths: list[str]) -> int:
    """Parses the Julia files with tree-sitter-julia (a grammar, not Julia: it catches
    unbalanced blocks and brackets, not semantic errors)."""
    try:
        import tree_sitter_julia
        from tree_sitter import Language, Parser
    except ImportError:
        print("syntax: SKIPPED: tree-sitter / tree-sitter-julia not installed (pip install tree-sitter tree-sitter-julia)")
        return 0
    parser = Parser(Language(tree_sitter_julia.language()))
    bad = 0
    for path in paths:
        with open(path, "rb") as f:
            tree = parser.parse(f.read())
        errors, stack = [], [tree.root_node]
        while stack:
            node = stack.pop()
            if node.type == "ERROR" or node.is_missing:
                errors.append(node)
            stack.extend(node.children)
        rel = os.path.relpath(path, ROOT)
        for node in sorted(errors, key=lambda n: n.start_point)[:10]:
            print(f"syntax: {rel}:{node.start_point[0] + 1}: {'missing ' + node.type if node.is_missing else 'error'}")
        print(f"syntax: {'FAIL' if errors else 'ok  '} {rel} (tree-sitter-julia)")
        bad += bool(errors)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--syntax", action="store_true")
    args = ap.parse_args()
    if args.syntax:
        return syntax_check([CAPI, GACC_JL, RUNTESTS])
    if args.self_test:
        return self_test()
    if args.check:
        problems = check(read(HEADER), read(CAPI), read(GACC_JL))
        for p in problems:
            print("gen_julia_ccalls: " + p)
        if not problems:
            print("gen_julia_ccalls: OK: capi.jl matches include/gacc.h; Gacc.jl calls every C function through it")
        return 1 if problems else 0
    with open(CAPI, "w", encoding="utf-8") as f:
        f.write(generate(read(HEADER)))
    print(f"gen_julia_ccalls: wrote {os.path.relpath(CAPI, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
