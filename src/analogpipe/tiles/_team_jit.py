"""Helpers of the compiled kernels: for the team bodies (`*_team` cfuncs, run by
`analogpipe.tiles.rng.run_team` as parallel regions of torch's OpenMP threads) a shared work
counter and typed pointers from the addresses in a body's int64 argument array; for every
kernel the float32 bit casts and the fused multiply-add."""

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic

BODY = _types.void(_types.CPointer(_types.int64))  # void body(int64 *args)


@_intrinsic
def claim(typingctx, counter):
    """Atomically take the next value of counter[0] (int64 array): fetch-and-add 1."""
    sig = _types.int64(counter)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", arr.data, ir.Constant(ir.IntType(64), 1), "seq_cst")

    return sig, codegen


def _pointer(numba_type, llvm_type):
    @_intrinsic
    def at(typingctx, addr):
        sig = _types.CPointer(numba_type)(_types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], ir.PointerType(llvm_type))

        return sig, codegen

    return at


f32_at = _pointer(_types.float32, ir.FloatType())  # the float32 pointer at an address
f64_at = _pointer(_types.float64, ir.DoubleType())
i32_at = _pointer(_types.int32, ir.IntType(32))
i64_at = _pointer(_types.int64, ir.IntType(64))


@_intrinsic
def f32_bits(typingctx, x):
    """The IEEE bits of a float32 as int32."""
    sig = _types.int32(_types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@_intrinsic
def f32_from_bits(typingctx, x):
    """The float32 with the given IEEE bits."""
    sig = _types.float32(_types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@numba.njit(inline="always")
def f32_arg(a, k):
    """The float32 value passed as its bits in a[k] of a team body's int64 arguments
    (`analogpipe.tiles.rng.team_args`)."""
    return f32_from_bits(np.int32(a[k]))


@_intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma; float32 or float64), as torch's CPU kernels
    compute `add_(z, alpha=s)` and contracted products."""
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        name = "llvm.fma.f32" if ty == ir.FloatType() else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)
        return builder.call(fn, args)

    return sig, codegen


@_intrinsic
def wide_vectors(typingctx):
    """Ask LLVM to vectorize the calling function's loops 512 bits wide where the CPU has
    AVX-512 (the function attribute "prefer-vector-width"="512"; LLVM's default for such
    CPUs is 256). The values are the same (the same IEEE operations, more lanes); the noise
    generator runs about 20% faster (1.41 -> 1.11 ns per value, one thread). llvmlite has no
    API for string attributes, so the attribute is added to its set directly; where that
    fails (another llvmlite), the call does nothing."""
    sig = _types.void()

    def codegen(context, builder, signature, args):
        try:
            attrs = builder.function.attributes
            set.add(attrs, '"prefer-vector-width"="512"')
        except Exception:  # noqa: BLE001 - a speed hint only: never fail a build for it
            pass
        return context.get_dummy_value()

    return sig, codegen
