"""Agent tuning (XTuner's agent fine-tuning, Lagent's AgentFLAN idea): tool-use trajectories for the built-in model.

- :mod:`puyu.agent.tuning.gsm8k`: GSM8K train solutions as Python programs (one line per ``<<48/2=24>>``);
- :mod:`puyu.agent.tuning.tasks`: a seeded generator of bilingual equation and arithmetic tasks;
- :mod:`puyu.agent.tuning.build`: trajectories recorded with the agent's own protocol and tools, each
  tool run for real, checked against the expected answer, mixed with glaive chats and cached as JSONL.

``puyu agent-tune`` builds the set and trains the ``agent_tuning`` recipe on it (see README, Agents).
"""

from puyu.agent.tuning.build import Mix, Report, build_agent_data, build_rows
from puyu.agent.tuning.gsm8k import NotAProgram, gsm8k_program
from puyu.agent.tuning.tasks import HELD_OUT_PROMPTS, Task, generate_tasks

__all__ = ["Mix", "Report", "build_agent_data", "build_rows", "NotAProgram", "gsm8k_program", "HELD_OUT_PROMPTS", "Task",
           "generate_tasks"]
