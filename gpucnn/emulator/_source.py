"""From a preprocessed .cu source to C++ that g++ compiles for the emulator.

The source is first preprocessed with cuda_emu.h force-included (so macros, ``#if`` and comments
are gone), then three edits are made here, each keeping every line where it was:

* every ``__shared__`` declaration becomes a reference into per-block storage held by the runtime
  (``static``: one slot per declaration, ``extern``: the launch's dynamic shared memory);
* ``__global__`` is dropped and each ``extern "C"`` kernel is recorded with its parameters;
* entry points are appended: ``__emu_entry_<kernel>(void** args)`` calls the kernel with its
  arguments, ``__emu_sig_<kernel>()`` says the parameter types as the compiler sees them.
"""
import re
from dataclasses import dataclass, field

_TOKENS = re.compile(
    r'"(?:\\.|[^"\\\n])*"'          # string literal
    r"|'(?:\\.|[^'\\\n])*'"         # char literal
    r"|^\#[^\n]*"                   # line marker or pragma
    r"|[{};]"
    r"|\b__shared__\b|\b__global__\b",
    re.M,
)
_TYPE_WORDS = {
    "void", "bool", "char", "short", "int", "long", "float", "double", "signed", "unsigned",
    "const", "volatile", "__restrict__", "__restrict", "restrict", "struct", "class",
}


class SourceError(ValueError):
    """A construct the emulator cannot translate; the message says which and where."""


@dataclass
class Kernel:
    name: str
    param_names: list
    param_decls: list           # the parameter declarations as written (for messages)
    extern_c: bool
    template: bool


@dataclass
class Translated:
    text: str
    kernels: dict = field(default_factory=dict)     # name -> Kernel
    shared_vars: int = 0


def _line_at(text, pos):
    """(file, line) of ``pos`` in preprocessed text, from the last line marker before it."""
    start = text.rfind("\n#", 0, pos)
    while start >= 0:
        m = re.match(r'\n# (\d+) "([^"]*)"', text[start:start + 4096])
        if m:
            eol = text.index("\n", start + 1)
            return m.group(2), int(m.group(1)) + text.count("\n", eol + 1, pos)
        start = text.rfind("\n#", 0, start)
    return "<source>", text.count("\n", 0, pos) + 1


def _split_top(text, sep=","):
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _parse_declarator(decl, where):
    """'float *p[4][5]' -> ('float *', 'p', '[4][5]')."""
    decl = decl.strip()
    m = re.search(r"((?:\s*\[[^\[\]]*\])*)\s*$", decl)
    dims = re.sub(r"\s+", "", m.group(1))
    rest = decl[:m.start()].rstrip()
    m = re.search(r"([A-Za-z_]\w*)$", rest)
    if not m:
        raise SourceError(f"{where}: cannot read the __shared__ declaration {decl!r}")
    return rest[:m.start()], m.group(1), dims


def _shared_replacement(decl, ident, where):
    """C++ replacing one ``__shared__`` declaration (without its ';'); returns (code, names)."""
    text = " ".join(decl.split())
    is_extern = bool(re.search(r"\bextern\b", text))
    text = re.sub(r"\b(extern|static|__shared__)\b", " ", text)
    align = "1"
    m = re.search(r"__attribute__\s*\(\(\s*(?:__)?aligned(?:__)?\s*\(([^()]*)\)\s*\)\)|alignas\s*\(([^()]*)\)", text)
    if m:
        align = m.group(1) or m.group(2)
        text = text[:m.start()] + " " + text[m.end():]
    if "=" in text:
        raise SourceError(f"{where}: a __shared__ variable cannot have an initializer")
    declarators = _split_top(text)
    base, name, dims = _parse_declarator(declarators[0], where)
    base_type = base.rstrip(" *&")
    out = []
    for i, d in enumerate(declarators):
        if i:
            stars, name, dims = _parse_declarator(base_type + " " + d, where)
        else:
            stars = base
        ctype = f"{stars.strip()}{dims}"
        if is_extern:
            out.append((name, f"__emu_dynamic_ref<{ctype}>()"))
        else:
            out.append((name, f"__emu_shared_ref<{ctype}>({ident + i}, {align})"))
    return is_extern, out


def _kernel_signature(text, pos, where):
    """Parse 'void name(params)' after a __global__ at ``pos``."""
    m = re.compile(r"\s*(?:__attribute__\s*\(\(.*?\)\)\s*)*void\s+(?:__attribute__\s*\(\(.*?\)\)\s*)*"
                   r"([A-Za-z_]\w*)\s*\(", re.S).match(text, pos)
    if not m:
        raise SourceError(f"{where}: expected 'void name(' after __global__")
    depth, i = 1, m.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    params = " ".join(text[m.end():i - 1].split())
    names, decls = [], []
    if params and params != "void":
        for k, p in enumerate(_split_top(params)):
            p = p.strip()
            words = re.findall(r"[A-Za-z_]\w*", p)
            last = words[-1] if words else ""
            named = len(words) > 1 and last not in _TYPE_WORDS and re.search(r"[A-Za-z_]\w*\s*$", p)
            names.append(last if named else f"arg{k}")
            decls.append(p)
    return m.group(1), names, decls


def translate(text):
    """Preprocessed source -> Translated (see the module docstring)."""
    out, kernels = [], {}
    stack = []                       # 'ns' (namespace, extern "C" block) or 'fn' per open brace
    stmt_start, last, ident = 0, 0, 0
    for m in _TOKENS.finditer(text):
        tok = m.group(0)
        if tok[0] in "\"'":
            continue
        if tok[0] == "#" or tok == ";" or tok == "}":
            if tok == "}" and stack:
                stack.pop()
            stmt_start = m.end()
            continue
        if tok == "{":
            prefix = text[stmt_start:m.start()]
            is_ns = re.search(r'extern\s*"C(\+\+)?"\s*$|\bnamespace\b[^;{}]*$', prefix)
            stack.append(("ns-c" if "extern" in prefix else "ns") if is_ns else "fn")
            stmt_start = m.end()
            continue
        file_, line = _line_at(text, m.start())
        where = f"{file_}:{line}"
        if tok == "__global__":
            prefix = text[stmt_start:m.start()]
            name, names, decls = _kernel_signature(text, m.end(), where)
            extern_c = bool(re.search(r'extern\s*"C"', prefix)) or "ns-c" in stack
            if name not in kernels:
                kernels[name] = Kernel(name, names, decls, extern_c, "template" in prefix)
            out.append(text[last:m.start()])
            out.append(" " * len(tok))
            last = m.end()
            continue
        # __shared__: the declaration runs from the statement start to the next ';'
        start = stmt_start + len(text[stmt_start:m.start()]) - len(text[stmt_start:m.start()].lstrip())
        if start < last:
            raise SourceError(f"{where}: put each file-scope __shared__ declaration on a line of its own")
        end = text.index(";", m.end())
        decl = text[start:end]
        is_extern, pairs = _shared_replacement(decl, ident, where)
        ident += len(pairs)
        newlines = "\n" * decl.count("\n")
        out.append(text[last:start])
        if any(s == "fn" for s in stack):
            if is_extern:
                code = "; ".join(f"auto const {n} = {e}" for n, e in pairs)
            else:
                code = "; ".join(f"auto& {n} = {e}" for n, e in pairs)
            out.append(code + newlines)
        else:                        # file scope: a macro, defined on the next line
            out.append(newlines)
            eol = text.find("\n", end)
            eol = len(text) if eol < 0 else eol + 1
            out.append(text[end:eol])
            out.extend(f"#define {n} ({e})\n" for n, e in pairs)
            out.append(f'# {line + decl.count(chr(10)) + 1} "{file_}"\n')
            end = eol
        last = end
    out.append(text[last:])
    return Translated("".join(out), kernels, ident)


def entry_points(kernels):
    """C++ appended to the translated source: one entry and one signature function per kernel."""
    lines = ['# 1 "<gpucnn emulator entry points>"']
    callable_ = [k for k in kernels.values() if k.extern_c and not k.template]
    for k in callable_:
        lines.append(f'extern "C" __attribute__((visibility("default"))) void __emu_entry_{k.name}'
                     f"(void** a) {{ __emu_invoke({k.name}, a); }}")
        lines.append(f'extern "C" __attribute__((visibility("default"))) const char* __emu_sig_{k.name}'
                     f"() {{ static char s[512]; return __emu_describe({k.name}, s); }}")
    lines.append('extern "C" __attribute__((visibility("default"))) void (*__emu_lookup(const char* n))(void**) {')
    for k in callable_:
        lines.append(f'    if (!__builtin_strcmp(n, "{k.name}")) return __emu_entry_{k.name};')
    lines.append("    return 0;\n}\n")
    return "\n".join(lines)
