"""Agents (Lagent-style): tools, a sandboxed Python interpreter, ReAct and function-calling loops.

This release has the sandbox only: :class:`~puyu.agent.sandbox.PythonSandbox`.
"""

from puyu.agent.sandbox import PythonSandbox, SandboxResult

__all__ = ["PythonSandbox", "SandboxResult"]
