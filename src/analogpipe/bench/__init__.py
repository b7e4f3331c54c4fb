"""Speed benchmarks against plain PyTorch (`analogpipe bench`).

Add a group from any module::

    from analogpipe.bench import Row, register, time_pair, median

    @register("mygroup")
    def bench_mygroup(quick: bool) -> list[Row]:
        base, subj = time_pair(baseline_fn, subject_fn, warmup=3, repeats=20)
        return [Row(group="mygroup", case="...", baseline_name="torch",
                    baseline_s=median(base), subject_name="analog",
                    subject_s=median(subj), target=1.5)]

and list the module in `analogpipe.commands.bench.GROUP_MODULES`.
"""

from analogpipe.bench.harness import (
    Row,
    configure_threads,
    format_table,
    groups,
    machine_stamp,
    median,
    register,
    run,
    time_fn,
    time_pair,
    write_json,
)

__all__ = [
    "Row",
    "configure_threads",
    "format_table",
    "groups",
    "machine_stamp",
    "median",
    "register",
    "run",
    "time_fn",
    "time_pair",
    "write_json",
]
