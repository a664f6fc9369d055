"""A sandboxed Python interpreter, used by the agents' python tool and by code benchmarks (HumanEval, MBPP).

A stage of its own below both, so evaluation does not depend on agents.
"""

from puyu.sandbox.python import PythonSandbox, SandboxResult

__all__ = ["PythonSandbox", "SandboxResult"]
