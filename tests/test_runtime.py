"""analogpipe.runtime: the allocator setting is applied by the CLI, can be refused by the
environment, and changes no result."""

import subprocess
import sys

import pytest

CODE = ("import analogpipe.runtime as r; ok = r.keep_freed_memory(); "
        "print(ok, r.keep_freed_memory(), r.malloc_setting())")


def _run(env_value):
    import os
    env = dict(os.environ)
    env.pop("ANALOGPIPE_MALLOC", None)
    if env_value is not None:
        env["ANALOGPIPE_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          env=env, check=True).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_applies_once_and_can_be_refused():
    out = _run(None)
    assert out[:2] == ["True", "True"] and "kept" in " ".join(out)
    out = _run("system")
    assert out[:2] == ["False", "False"] and out[2] == "default"


def test_the_setting_changes_no_result():
    """The same seeded analog training steps in two processes, with and without the
    setting: bit-identical weights."""
    code = (
        "import sys, torch, analogpipe.runtime as r\n"
        "if sys.argv[1] == '1': r.keep_freed_memory()\n"
        "from analogpipe.nn import convert_to_analog\n"
        "from analogpipe.optim import AnalogSGD\n"
        "from analogpipe.presets import paper_config\n"
        "torch.manual_seed(0)\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),\n"
        "                        torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))\n"
        "m = convert_to_analog(m, paper_config(update='pulsed'), seed=1)\n"
        "opt = AnalogSGD(m, lr=0.1)\n"
        "g = torch.Generator().manual_seed(2)\n"
        "x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)\n"
        "for _ in range(3):\n"
        "    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y, reduction='sum')"
        ".backward(); opt.step()\n"
        "print(float(sum(t.double().sum() for t in m.state_dict().values()\n"
        "                if isinstance(t, torch.Tensor) and t.is_floating_point())))\n"
    )
    outs = [subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True,
                           check=True).stdout for flag in ("0", "1")]
    assert outs[0] == outs[1] and outs[0].strip()
