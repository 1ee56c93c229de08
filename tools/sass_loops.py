"""The per-splat loops of compiled render kernels, counted in their machine code (no GPU needed).

    python tools/sass_loops.py BINARY [BINARY ...] [--match REGEX]

BINARY is anything cuobjdump reads: this package's `_C*.so` or an object file from
check_cuda_compile.py, gsplat's `gsplat_cuda.so`, the original rasterizer's `_C*.so`. For each
kernel whose name matches (default: the render kernels of all three), and each of its per-splat
loops (the innermost loops that take an exponential, as check_cuda_compile.py finds them), it
prints the loop's instructions in all and by kind: shuffles, atomics, exponentials, branches and
the calls into a division's slow path. These are static counts of one loop body, not what a warp
executes (a branch skips some; a divergent branch runs both sides), so they compare two builds of
one kernel, or kernels of like structure, and say where instructions go; a GPU says the time.
"""
import argparse
import collections
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_cuda_compile  # noqa: E402

DEFAULT_MATCH = r"render|rasterize_to_pixels|renderCUDA"
KINDS = (("shuffles", r"^SHFL\b"), ("atomics", r"^(RED|ATOM)"), ("exps", r"^MUFU\.EX2"),
         ("branches", r"^BRA\b"), ("slow calls", r"^CALL\b"))


def opcode(instruction):
    """The instruction without its predicate: "@!P0 BRA 0x1ea0" -> "BRA 0x1ea0"."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction)


def loop_summary(code, loop):
    """{"instructions": n, kind: n, ...} of one loop, (first, last address), of `code`."""
    body = [opcode(i) for a, i in code if loop[0] <= a <= loop[1]]
    summary = collections.OrderedDict(instructions=len(body))
    for kind, pattern in KINDS:
        summary[kind] = sum(bool(re.match(pattern, i)) for i in body)
    return summary


def binary_loops(path, match, disassembler):
    """[(arch, kernel, [summary of each per-splat loop])] of the kernels of `path` whose
    mangled name matches `match`."""
    env = dict(os.environ, PATH=disassembler + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([os.path.join(disassembler, "cuobjdump"), "-sass", path],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"sass_loops: cuobjdump -sass {path} failed:\n{proc.stdout}{proc.stderr}")
    rows = [(arch, name, code) for arch, name, code
            in check_cuda_compile.sass_functions(proc.stdout) if re.search(match, name)]
    names = check_cuda_compile.short_names([name for _, name, _ in rows])
    return [(arch, short, [loop_summary(code, loop)
                           for loop in check_cuda_compile.per_splat_loops(code)])
            for (arch, _, code), short in zip(rows, names)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--match", default=DEFAULT_MATCH, help="regex on the mangled kernel names")
    args = ap.parse_args()
    try:
        nvcc = check_cuda_compile.find_nvcc()
    except SystemExit:  # no toolkit: PyPI's cuobjdump
        nvcc = ""
    disassembler = check_cuda_compile.find_disassembler(nvcc)
    header = "  ".join(f"{k:>8s}" for k in ("instrs",) + tuple(k for k, _ in KINDS))
    for path in args.binaries:
        print(f"{path}\n  arch   loop  {header}  kernel")
        for arch, kernel, loops in binary_loops(path, args.match, disassembler):
            for n, summary in enumerate(loops):
                counts = "  ".join(f"{v:8d}" for v in summary.values())
                print(f"  {arch:6s} {n:4d}  {counts}  {kernel}")


if __name__ == "__main__":
    main()
