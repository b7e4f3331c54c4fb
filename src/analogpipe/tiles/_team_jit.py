"""Helpers of the compiled team bodies (`*_team` cfuncs, run by `analogpipe.tiles.rng.run_team`
as parallel regions of torch's OpenMP threads): a shared work counter and typed pointers from
the addresses in a body's int64 argument array."""

from llvmlite import ir
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
