#!/usr/bin/env python3
"""Checks that the Julia binding (bindings/julia/src/Gacc.jl) matches include/gacc.h.

No Julia toolchain is available where gacc is built and tested, so the Julia binding
cannot be run there. This check keeps it from drifting silently: it parses the C
header and the Julia source and fails on any difference in

  * functions: every function in the header must be wrapped by at least one
    `ccall((:name, libgacc), Ret, (ArgTypes...), args...)` site; every ccall site must
    name a header function, pass as many types as the prototype has parameters, and
    use Julia types compatible with the C types (an explicit table, below); the
    number of values passed must equal the number of types;
  * constants: every #define (except the include guard) and every enum value must be
    a Julia `const` of the same name and value, and every Julia `const GACC_*` must
    exist in the header;
  * structs: every struct defined in the header must have an immutable Julia mirror
    named after it (gacc_step_info -> StepInfo) with the same fields, in the same order,
    of compatible types (so the isbits layout is the C layout).

When another C function lands in the header (gacc_save, gacc_load, ...), this check
fails until the Julia binding wraps it: that is the point.

Usage:
  check_julia_binding.py [--header include/gacc.h] [--julia bindings/julia/src/Gacc.jl]
  check_julia_binding.py --self-test   # the real files must pass, and mutated copies
                                       # (wrong type, missing function, ...) must fail
  check_julia_binding.py --syntax      # parse Gacc.jl and runtests.jl with tree-sitter-julia
                                       # (optional: pip install tree-sitter tree-sitter-julia)

Exit status 0 when consistent, 1 with a list of problems otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HEADER = os.path.join(ROOT, "include", "gacc.h")
DEFAULT_JULIA = os.path.join(ROOT, "bindings", "julia", "src", "Gacc.jl")
LIBRARY_SYMBOL = "libgacc"

# C scalar type -> the Julia types that have the same size, signedness and ABI class.
# Deliberately explicit: a C type missing here is an error, not a guess.
SCALARS: dict[str, set[str]] = {
    "void": {"Cvoid", "Nothing"},
    "char": {"Cchar", "UInt8", "Int8"},
    "int8_t": {"Int8"},
    "uint8_t": {"UInt8", "Cuchar"},
    "int16_t": {"Int16", "Cshort"},
    "uint16_t": {"UInt16", "Cushort"},
    "int": {"Cint", "Int32"},
    "unsigned": {"Cuint", "UInt32"},
    "int32_t": {"Int32", "Cint"},
    "uint32_t": {"UInt32", "Cuint"},
    "int64_t": {"Int64", "Clonglong"},
    "uint64_t": {"UInt64", "Culonglong"},
    "size_t": {"Csize_t", "UInt"},
    "float": {"Cfloat", "Float32"},
    "double": {"Cdouble", "Float64"},
    "bool": {"Bool"},
}
# A C enum is passed as a C int.
ENUM_TYPES = {"Cint", "Int32"}


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
    text: str       # as written, for messages
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
    # Function-like macros over a function of the same name (C callers' spelling),
    # with the gacc functions each one calls: gacc_config_init -> gacc_config_init_sized.
    macro_calls: dict[str, set[str]] = field(default_factory=dict)


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


def same_value(a: object, b: object) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        return a == b or abs(a - b) <= 1e-7 * max(abs(a), abs(b))
    return False


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
                                 "(extend parse_c_number in scripts/check_julia_binding.py)")
            h.defines[name] = v

    for m in re.finditer(r"^\s*#\s*define\s+(\w+)\(([^)]*)\)(.*)$", text, flags=re.M):
        h.macro_calls[m.group(1)] = set(re.findall(r"\b(gacc_\w+)\s*\(", m.group(3)))

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
# Julia source

@dataclass
class CCall:
    name: str
    library: str
    ret: str
    argtypes: list[str]
    nvalues: int
    line: int


@dataclass
class Julia:
    ccalls: list[CCall] = field(default_factory=list)
    consts: dict[str, tuple[object, str | None, int]] = field(default_factory=dict)  # name -> (value, type, line)
    structs: dict[str, tuple[bool, list[tuple[str, str]], list[str], int]] = field(default_factory=dict)
    macro_ccalls: list[int] = field(default_factory=list)


def mask_julia(text: str) -> tuple[str, list[str]]:
    """Replaces string literals by placeholders and removes comments; keeps line breaks.

    Handles "..." (with escapes and $(...) interpolation), \"\"\"...\"\"\", #= =# (nested) and
    # comments. Character literals are not recognised ('x' is kept as code)."""
    out, strings = [], []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("#=", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("#=", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("=#", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c == '"':
            triple = text.startswith('"""', i)
            delim = '"""' if triple else '"'
            j = i + len(delim)
            buf = []
            paren = 0
            while j < n:
                if text[j] == "\\" and not triple:
                    buf.append(text[j:j + 2])
                    j += 2
                    continue
                if text.startswith("$(", j):
                    paren += 1
                    buf.append("$(")
                    j += 2
                    continue
                if paren and text[j] == "(":
                    paren += 1
                elif paren and text[j] == ")":
                    paren -= 1
                elif not paren and text.startswith(delim, j):
                    break
                buf.append(text[j])
                j += 1
            content = "".join(buf)
            strings.append(content)
            out.append(f'"@S{len(strings) - 1}@"' + "\n" * content.count("\n"))
            i = j + len(delim)
            continue
        out.append(c)
        i += 1
    return "".join(out), strings


def matching(text: str, open_pos: int) -> int:
    """Index of the bracket closing the one at open_pos."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for k in range(open_pos, len(text)):
        ch = text[k]
        if ch in pairs:
            stack.append(pairs[ch])
        elif ch in ")]}":
            if not stack or stack.pop() != ch:
                raise ValueError(f"unbalanced brackets near offset {k}")
            if not stack:
                return k
    raise ValueError(f"unclosed bracket at offset {open_pos}")


def split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    tail = "".join(cur).strip()
    if tail:
        parts.append(tail)
    return parts


def norm_type(t: str) -> str:
    return re.sub(r"\s+", "", t)


JULIA_NUMBER_TYPES = {"Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Int", "UInt",
                      "Cint", "Cuint", "Csize_t", "Clonglong", "Culonglong", "Float32", "Float64", "Cfloat",
                      "Cdouble"}


def eval_julia_const(expr: str, strings: list[str]) -> tuple[object, str | None]:
    """Value and explicit type of `const X = <expr>`: "str", 3, -2, 0x10, 1 << 4, 1.5, 1f-3,
    or T(<one of these>) with T a number type."""
    e = expr.strip()
    m = re.fullmatch(r'"@S(\d+)@"', e)
    if m:
        return strings[int(m.group(1))], "String"
    jtype = None
    m = re.fullmatch(r"(\w+)\((.*)\)", e, flags=re.S)
    if m and m.group(1) in JULIA_NUMBER_TYPES:
        jtype, e = m.group(1), m.group(2)
    e = re.sub(r"(\d(?:\.\d*)?)f([-+]?\d+)", r"\1e\2", e)    # 1f-3 is a Float32 literal
    v = _eval_arith(e)
    if v is None:
        return ("<unevaluated>", expr.strip()), jtype
    return v, jtype


def parse_julia(text: str) -> Julia:
    code, strings = mask_julia(text)
    j = Julia()

    def line_of(pos: int) -> int:
        return code.count("\n", 0, pos) + 1

    for m in re.finditer(r"@ccall\b", code):
        j.macro_ccalls.append(line_of(m.start()))

    for m in re.finditer(r"\bccall\s*\(", code):
        open_pos = m.end() - 1
        close_pos = matching(code, open_pos)
        args = split_top(code[open_pos + 1:close_pos])
        line = line_of(m.start())
        if len(args) < 3:
            raise ValueError(f"Gacc.jl:{line}: ccall with fewer than 3 arguments")
        target = re.fullmatch(r"\(\s*:(\w+)\s*,\s*(.+?)\s*\)", args[0].strip(), flags=re.S)
        if not target:
            raise ValueError(f"Gacc.jl:{line}: ccall target {args[0]!r} is not (:name, library)")
        tup = args[2].strip()
        if not (tup.startswith("(") and matching(tup, 0) == len(tup) - 1):
            raise ValueError(f"Gacc.jl:{line}: ccall argument types {tup!r} are not a literal tuple")
        argtypes = [norm_type(t) for t in split_top(tup[1:-1])]
        library = re.sub(r"@S(\d+)@", lambda s: strings[int(s.group(1))], target.group(2))
        j.ccalls.append(CCall(target.group(1), library, norm_type(args[1]), argtypes,
                              len(args) - 3, line))

    for m in re.finditer(r"^[ \t]*const[ \t]+(\w+)[ \t]*=[ \t]*(.+?)[ \t]*$", code, flags=re.M):
        value, jtype = eval_julia_const(m.group(2), strings)
        j.consts[m.group(1)] = (value, jtype, line_of(m.start()))

    lines = code.split("\n")
    k = 0
    while k < len(lines):
        m = re.match(r"^(\s*)(mutable\s+)?struct\s+(\w+)", lines[k])
        if not m:
            k += 1
            continue
        indent, mutable, name, start = m.group(1), bool(m.group(2)), m.group(3), k + 1
        fields, other = [], []
        k += 1
        while k < len(lines) and not re.match(rf"^{indent}end\b", lines[k]):
            s = lines[k].strip()
            fm = re.fullmatch(r"(\w+)\s*::\s*(.+)", s)
            if fm and not other:
                fields.append((fm.group(1), norm_type(fm.group(2))))
            elif s:
                other.append(s)
            k += 1
        j.structs[name] = (mutable, fields, other, start)
        k += 1
    return j


# --------------------------------------------------------------------------------------
# Comparison

def compatible(ct: CType, jt: str, h: Header, *, context: str) -> str | None:
    """None when Julia type jt can carry C type ct (as an argument, return or field);
    otherwise the reason."""

    def pointee_ok(base: str, depth: int, jt_inner: str) -> bool:
        if depth > 0:
            m = re.fullmatch(r"Ptr\{(.+)\}", jt_inner)
            return bool(m) and pointee_ok(base, depth - 1, m.group(1))
        return scalar_ok(base, jt_inner, pointee=True)

    def scalar_ok(base: str, jt_inner: str, pointee: bool) -> bool:
        if base in SCALARS:
            if base == "void" and pointee:
                return jt_inner == "Cvoid"
            return jt_inner in SCALARS[base]
        if base in h.enums:
            return jt_inner in ENUM_TYPES
        if base in h.opaque:
            return pointee and jt_inner == "Cvoid"
        if base in h.structs:
            return jt_inner == julia_struct_name(base)
        if base in h.fnptrs:
            return jt_inner == "Ptr{Cvoid}"
        return False

    known = ct.base in SCALARS or ct.base in h.enums or ct.base in h.opaque or ct.base in h.structs or ct.base in h.fnptrs
    if not known:
        return f"C type `{ct.text}` is not in the type table of scripts/check_julia_binding.py"
    if ct.array:
        m = re.fullmatch(r"NTuple\{\s*(\d+)\s*,\s*(.+?)\s*\}", jt)
        if context != "field":
            return f"C array `{ct.text}` outside a struct"
        if not m or int(m.group(1)) != ct.array or ct.depth != 0 or not scalar_ok(ct.base, m.group(2), pointee=False):
            return f"`{jt}` does not carry C `{ct.text}` (write NTuple{{{ct.array}, T}})"
        return None
    if ct.depth == 0:
        if ct.base == "void" and context != "return":
            return "void is only a return type"
        if ct.base in h.opaque:
            return f"opaque `{ct.base}` by value"
        return None if scalar_ok(ct.base, jt, pointee=False) else f"`{jt}` does not carry C `{ct.text}`"
    # Pointers. C strings may be Cstring; Ref{T} is allowed for T* arguments (not fields,
    # not returns) where T is not void.
    if ct.base == "char" and ct.depth == 1 and jt == "Cstring":
        return None
    m = re.fullmatch(r"(Ptr|Ref)\{(.+)\}", jt)
    if not m:
        return f"`{jt}` is not a pointer type for C `{ct.text}`"
    kind, inner = m.group(1), m.group(2)
    if kind == "Ref":
        if context != "argument":
            return f"Ref is only for arguments (C `{ct.text}` as {context})"
        if ct.depth == 1 and ct.base == "void":
            return "Ref{Cvoid} for void*: use Ptr{Cvoid}"
    return None if pointee_ok(ct.base, ct.depth - 1, inner) else f"`{jt}` does not carry C `{ct.text}`"


def compare(h: Header, j: Julia) -> list[str]:
    problems: list[str] = []
    for line in j.macro_ccalls:
        problems.append(f"Gacc.jl:{line}: @ccall is not checked; write ccall((:name, {LIBRARY_SYMBOL}), Ret, (Args...), ...)")

    by_name: dict[str, list[CCall]] = {}
    for c in j.ccalls:
        by_name.setdefault(c.name, []).append(c)
        if c.library != LIBRARY_SYMBOL:
            problems.append(f"Gacc.jl:{c.line}: ccall of {c.name} uses library `{c.library}`, not `{LIBRARY_SYMBOL}`")

    for name, fn in h.functions.items():
        sites = by_name.get(name)
        if not sites and any(f in by_name for f in h.macro_calls.get(name, ())):
            continue  # C's macro of this name calls a function Julia wraps (and passes sizeof)
        if not sites:
            problems.append(f"{name}: declared in gacc.h but not wrapped by any ccall in Gacc.jl")
            continue
        for c in sites:
            where = f"Gacc.jl:{c.line}: {name}"
            why = compatible(fn.ret, c.ret, h, context="return")
            if why:
                problems.append(f"{where}: return type: {why}")
            if len(c.argtypes) != len(fn.params):
                problems.append(f"{where}: {len(c.argtypes)} argument types, the C prototype has {len(fn.params)} "
                                f"({', '.join(p[0].text + ' ' + p[1] for p in fn.params) or 'void'})")
            else:
                for (ct, pname), jt in zip(fn.params, c.argtypes):
                    why = compatible(ct, jt, h, context="argument")
                    if why:
                        problems.append(f"{where}: parameter `{pname}`: {why}")
            if c.nvalues != len(c.argtypes):
                problems.append(f"{where}: passes {c.nvalues} values for {len(c.argtypes)} argument types")
    for name, sites in by_name.items():
        if name not in h.functions:
            problems.append(f"Gacc.jl:{sites[0].line}: ccall of `{name}`, which gacc.h does not declare")

    expected: dict[str, object] = dict(h.defines)
    for enum, values in h.enums.items():
        for k, v in values.items():
            if k in expected and expected[k] != v:
                problems.append(f"{k}: defined twice in gacc.h with different values")
            expected[k] = v
    for name, value in expected.items():
        if name not in j.consts:
            problems.append(f"{name}: constant in gacc.h ({value!r}) has no `const {name}` in Gacc.jl")
            continue
        jv, jtype, line = j.consts[name]
        if not same_value(jv, value):
            problems.append(f"Gacc.jl:{line}: const {name} = {jv!r}, gacc.h says {value!r}")
        is_enum = any(name in vals for vals in h.enums.values())
        if is_enum and jtype not in ENUM_TYPES:
            problems.append(f"Gacc.jl:{line}: const {name} is an enum value (a C int): write Cint({value})")
    for name, (_, _, line) in j.consts.items():
        if name.startswith("GACC_") and name not in expected:
            problems.append(f"Gacc.jl:{line}: const {name} does not exist in gacc.h")

    for cname, cfields in h.structs.items():
        jname = julia_struct_name(cname)
        if jname not in j.structs:
            problems.append(f"{cname}: struct in gacc.h has no Julia mirror `struct {jname}` in Gacc.jl")
            continue
        mutable, jfields, other, line = j.structs[jname]
        where = f"Gacc.jl:{line}: struct {jname} (mirror of {cname})"
        if mutable:
            problems.append(f"{where}: must be an immutable (isbits) struct to have C layout")
        if other:
            problems.append(f"{where}: has more than fields ({other[0]!r}); define constructors outside it")
        cnames = [n for _, n in cfields]
        jnames = [n for n, _ in jfields]
        if cnames != jnames:
            problems.append(f"{where}: fields {jnames} differ from gacc.h's {cnames} (names and order must match)")
            continue
        for (ct, fname), (_, jt) in zip(cfields, jfields):
            why = compatible(ct, jt, h, context="field")
            if why:
                problems.append(f"{where}: field `{fname}`: {why}")
    return problems


def check(header_path: str, julia_path: str) -> list[str]:
    with open(header_path, encoding="utf-8") as f:
        h = parse_header(f.read())
    with open(julia_path, encoding="utf-8") as f:
        j = parse_julia(f.read())
    if not h.functions:
        return [f"{header_path}: no functions found (parser broken?)"]
    problems = compare(h, j)
    # The package version follows the library's.
    project = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(julia_path))), "Project.toml")
    if os.path.exists(project) and "GACC_VERSION" in h.defines:
        with open(project, encoding="utf-8") as f:
            m = re.search(r'^version\s*=\s*"([^"]*)"', f.read(), flags=re.M)
        if not m or m.group(1) != h.defines["GACC_VERSION"]:
            problems.append(f"{os.path.relpath(project, ROOT)}: version {m.group(1) if m else None!r}, "
                            f"gacc.h says {h.defines['GACC_VERSION']!r}")
    return problems


# --------------------------------------------------------------------------------------
# Self-test: the checker must catch each kind of drift.

MUTATIONS = [
    # (description, file, old, new, expected fragment of a problem)
    ("a new C function (e.g. a checkpoint API) without a wrapper", "h",
     "enum gacc_status gacc_zero(struct gacc_engine *e);",
     "enum gacc_status gacc_zero(struct gacc_engine *e);\n\nenum gacc_status gacc_export_ema(const struct gacc_engine *e, float *out);",
     "gacc_export_ema: declared in gacc.h but not wrapped"),
    ("a wrapper of a function the header no longer has", "h",
     "enum gacc_status gacc_get_lr(const struct gacc_engine *e, float *out);", "",
     "ccall of `gacc_get_lr`, which gacc.h does not declare"),
    ("a C parameter added", "h",
     "enum gacc_status gacc_set_lr(struct gacc_engine *e, float lr);",
     "enum gacc_status gacc_set_lr(struct gacc_engine *e, float lr, uint32_t flags);",
     "gacc_set_lr: 2 argument types, the C prototype has 3"),
    ("one argument type too many in Julia", "j",
     "(:gacc_zero, libgacc), Cint, (Ptr{Cvoid},), handle(e)",
     "(:gacc_zero, libgacc), Cint, (Ptr{Cvoid}, Cint), handle(e)",
     "gacc_zero: 2 argument types, the C prototype has 1"),
    ("float passed as Cdouble", "j",
     "(:gacc_set_lr, libgacc), Cint, (Ptr{Cvoid}, Cfloat)",
     "(:gacc_set_lr, libgacc), Cint, (Ptr{Cvoid}, Cdouble)",
     "parameter `lr`: `Cdouble` does not carry C `float`"),
    ("size_t passed as Cint", "j",
     "(Ptr{Cvoid}, Ptr{Cfloat}, Csize_t),\n                                   handle(e), pointer(dst)",
     "(Ptr{Cvoid}, Ptr{Cfloat}, Cint),\n                                   handle(e), pointer(dst)",
     "parameter `numel`: `Cint` does not carry C `size_t`"),
    ("pointer depth lost", "j",
     "(Ptr{Cvoid}, Csize_t, UInt32, Ref{Ptr{Cvoid}})",
     "(Ptr{Cvoid}, Csize_t, UInt32, Ref{Cvoid})",
     "parameter `out`: `Ref{Cvoid}` does not carry C `void **`"),
    ("status returned as Cvoid", "j",
     "(:gacc_numel, libgacc), Cint,", "(:gacc_numel, libgacc), Cvoid,",
     "gacc_numel: return type"),
    ("values passed do not match the types", "j",
     "(Ptr{Cvoid}, Cfloat), handle(e), lr)", "(Ptr{Cvoid}, Cfloat), handle(e), lr, lr)",
     "passes 3 values for 2 argument types"),
    ("another library", "j", "(:gacc_zero, libgacc)", '(:gacc_zero, "libother")',
     "ccall of gacc_zero uses library"),
    ("a new #define", "h", "#define GACC_DTYPE_BF16 2", "#define GACC_DTYPE_BF16 2\n\n#define GACC_DTYPE_FP8 3",
     "GACC_DTYPE_FP8: constant in gacc.h"),
    ("a constant with a different value", "j", "const GACC_DTYPE_BF16 = UInt32(2)",
     "const GACC_DTYPE_BF16 = UInt32(3)", "const GACC_DTYPE_BF16 = 3, gacc.h says 2"),
    ("a version string out of date", "h", '#define GACC_VERSION "0.1.0"', '#define GACC_VERSION "0.2.0"',
     "const GACC_VERSION = '0.1.0', gacc.h says '0.2.0'"),
    ("a new status code", "h", "  GACC_ERR_INTERNAL = 11,", "  GACC_ERR_INTERNAL = 11,\n  GACC_ERR_TIMEOUT = 12,",
     "GACC_ERR_TIMEOUT: constant in gacc.h"),
    ("a stale Julia constant", "j", "const GACC_GRADS_SUM = UInt32(1)",
     "const GACC_GRADS_SUM = UInt32(1)\nconst GACC_GRADS_MAX = UInt32(2)", "const GACC_GRADS_MAX does not exist"),
    ("struct fields reordered", "j", "    beta1::Cfloat\n    beta2::Cfloat", "    beta2::Cfloat\n    beta1::Cfloat",
     "names and order must match"),
    ("struct field of the wrong type", "j", "    nesterov::UInt32", "    nesterov::Bool",
     "field `nesterov`: `Bool` does not carry C `uint32_t`"),
    ("a new C struct field", "h", "  uint32_t loss_scale_policy;\n} gacc_config;",
     "  uint32_t loss_scale_policy;\n  float ema_decay;\n} gacc_config;", "differ from gacc.h's"),
    ("a new C struct", "h", "typedef struct gacc_engine gacc_engine;",
     "typedef struct gacc_engine gacc_engine;\n\ntypedef struct gacc_checkpoint_info {\n  uint64_t step;\n} gacc_checkpoint_info;",
     "no Julia mirror `struct CheckpointInfo`"),
    ("a mutable mirror", "j", "struct StepInfo\n", "mutable struct StepInfo\n", "must be an immutable"),
    ("the struct-size call dropped", "j",
     "ccall((:gacc_config_init_sized, libgacc), Cint, (Ref{Config}, Csize_t), r, sizeof(Config))",
     "GACC_OK", "gacc_config_init: declared in gacc.h but not wrapped"),
    ("loss_scale_policy missing from the mirror", "j", "    loss_scale_policy::UInt32", "",
     "differ from gacc.h's"),
    ("gacc_grad fields reordered", "j", "    dtype::UInt32\n    numel::Csize_t",
     "    numel::Csize_t\n    dtype::UInt32", "names and order must match"),
    ("gacc_grad.numel as a 32-bit integer", "j",
     "    data::Ptr{Cvoid}\n    dtype::UInt32\n    numel::Csize_t",
     "    data::Ptr{Cvoid}\n    dtype::UInt32\n    numel::UInt32",
     "field `numel`: `UInt32` does not carry C `size_t`"),
    ("the gradient table passed as a plain pointer", "j", "(Ptr{Cvoid}, Ptr{Grad}, Csize_t, Cdouble)",
     "(Ptr{Cvoid}, Ptr{Cvoid}, Csize_t, Cdouble)", "parameter `grads`"),
]


def self_test(header_path: str, julia_path: str) -> int:
    import tempfile

    base = check(header_path, julia_path)
    if base:
        print("self-test: the unmodified binding must pass first:")
        for p in base:
            print("  " + p)
        return 1
    with open(header_path, encoding="utf-8") as f:
        header = f.read()
    with open(julia_path, encoding="utf-8") as f:
        julia = f.read()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for desc, which, old, new, fragment in MUTATIONS:
            src = header if which == "h" else julia
            if src.count(old) != 1:
                print(f"self-test: FAIL {desc}: the text to mutate occurs {src.count(old)} times "
                      f"(update MUTATIONS): {old!r}")
                failures += 1
                continue
            mutated = src.replace(old, new)
            hp, jp = os.path.join(tmp, "gacc.h"), os.path.join(tmp, "Gacc.jl")
            with open(hp, "w", encoding="utf-8") as f:
                f.write(mutated if which == "h" else header)
            with open(jp, "w", encoding="utf-8") as f:
                f.write(mutated if which == "j" else julia)
            try:
                problems = check(hp, jp)
            except ValueError as e:
                problems = [f"parse error: {e}"]
            hit = [p for p in problems if fragment in p]
            if hit:
                print(f"self-test: ok   {desc}: {hit[0]}")
            else:
                print(f"self-test: FAIL {desc}: not detected (expected {fragment!r}; got {problems})")
                failures += 1
    print(f"self-test: {len(MUTATIONS) - failures}/{len(MUTATIONS)} mutations detected")
    return 1 if failures else 0


def syntax_check(paths: list[str], required: bool) -> int:
    """Parses the Julia files with tree-sitter-julia (a grammar, not Julia itself: it
    catches unbalanced blocks and brackets, not semantic errors)."""
    try:
        import tree_sitter_julia
        from tree_sitter import Language, Parser
    except ImportError:
        print("syntax: SKIPPED: tree-sitter / tree-sitter-julia not installed "
              "(pip install tree-sitter tree-sitter-julia)")
        return 1 if required else 0
    parser = Parser(Language(tree_sitter_julia.language()))
    bad = 0
    for path in paths:
        with open(path, "rb") as f:
            tree = parser.parse(f.read())
        errors = []
        stack = [tree.root_node]
        while stack:
            node = stack.pop()
            if node.type == "ERROR" or node.is_missing:
                errors.append(node)
            stack.extend(node.children)
        rel = os.path.relpath(path, ROOT)
        if errors:
            bad += 1
            for node in sorted(errors, key=lambda n: n.start_point)[:10]:
                row, col = node.start_point
                kind = "missing " + node.type if node.is_missing else "syntax error"
                print(f"syntax: {rel}:{row + 1}:{col + 1}: {kind}: {node.text[:60]!r}")
        else:
            print(f"syntax: ok   {rel} (tree-sitter-julia)")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--header", default=DEFAULT_HEADER)
    ap.add_argument("--julia", default=DEFAULT_JULIA)
    ap.add_argument("--self-test", action="store_true", help="also check that mutated copies are rejected")
    ap.add_argument("--syntax", nargs="*", metavar="FILE.jl",
                    help="only parse these Julia files (default: the package's src and test) with "
                         "tree-sitter-julia; skipped when it is not installed")
    ap.add_argument("--require-syntax", action="store_true", help="with --syntax: fail when tree-sitter is missing")
    args = ap.parse_args()
    if args.syntax is not None:
        files = args.syntax or [args.julia, os.path.join(os.path.dirname(os.path.dirname(args.julia)), "test", "runtests.jl")]
        return syntax_check(files, args.require_syntax)
    try:
        if args.self_test:
            return self_test(args.header, args.julia)
        problems = check(args.header, args.julia)
    except ValueError as e:
        print(f"check_julia_binding: cannot parse: {e}")
        return 1
    with open(args.header, encoding="utf-8") as f:
        h = parse_header(f.read())
    with open(args.julia, encoding="utf-8") as f:
        j = parse_julia(f.read())
    if problems:
        print(f"check_julia_binding: {len(problems)} problem(s) between {os.path.relpath(args.header, ROOT)} "
              f"and {os.path.relpath(args.julia, ROOT)}:")
        for p in problems:
            print("  " + p)
        return 1
    nconst = len(h.defines) + sum(len(v) for v in h.enums.values())
    print(f"check_julia_binding: OK: {len(h.functions)} functions ({len(j.ccalls)} ccall sites), "
          f"{nconst} constants, {len(h.structs)} structs match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
