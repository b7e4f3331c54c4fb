"""SplitMix64's output function (Steele, Lea and Flood, OOPSLA 2014) as an inlined numba
function: the counter-based random numbers of both compiled kernels (`_pulsekernel_jit`,
`_rngkernel_jit`). The k-th number of key s is `mix(s + k * GOLD)`."""

import numba
import numpy as np

GOLD = np.uint64(0x9E3779B97F4A7C15)  # the golden-ratio increment
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always", error_model="numpy")
def mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))
