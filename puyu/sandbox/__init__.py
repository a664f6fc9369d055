"""A sandboxed Python interpreter, used by the agents' python tool and by code benchmarks (HumanEval, MBPP).

A stage of its own below both, so evaluation does not depend on agents.  :mod:`puyu.sandbox.units` is a helper for
the code that runs inside (``from puyu.sandbox.units import convert``: unit conversion with English or Chinese names).
"""

from puyu.sandbox.python import PythonSandbox, SandboxResult

__all__ = ["PythonSandbox", "SandboxResult"]
