"""Bad input on the command line: one clear error line naming the problem, exit code 2,
no traceback unless --debug."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from puyu.cli import main


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def bad_folder(tmp_path, config: dict, weights: bytes | None = b"not a safetensors file") -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


LLAMA = {"architectures": ["LlamaForCausalLM"], "vocab_size": 400, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such file or folder: ./no/such/model"),
        ("unknown-name", "unknown model 'no-such-model'; known names: smollm2-135m-instruct"),
        ("corrupt-safetensors", "damaged or incomplete"),
        ("corrupt-gguf", "damaged or not a GGUF model"),
        ("unsupported-arch", "unsupported architecture (GPT2LMHeadModel)"),
        ("no-weights", "has no .safetensors weights"),
        ("bad-temperature", "temperature must be in [0, 2] (0 is greedy)"),
        ("bad-dtype", "unknown dtype 'float8'"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, capsys, case, expected):
    model = {
        "missing": "./no/such/model",
        "unknown-name": "no-such-model",
        "corrupt-safetensors": lambda: bad_folder(tmp_path, LLAMA),
        "corrupt-gguf": lambda: (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage") and str(tmp_path / "bad.gguf"),
        "unsupported-arch": lambda: bad_folder(tmp_path, {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}),
        "no-weights": lambda: bad_folder(tmp_path, LLAMA, weights=None),
        "bad-temperature": "smollm2-135m-instruct",
        "bad-dtype": "./whatever",
    }[case]
    model = model() if callable(model) else model
    extra = {"bad-temperature": ["--temperature", "-1"], "bad-dtype": ["--dtype", "float8"]}.get(case, [])
    code, err = run(capsys, "chat", model, "-p", "hi", *extra)
    assert code == 2
    assert err.startswith("puyu: error: ") and expected in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_real_process_exit_code_and_debug_traceback(tmp_path):
    env_cmd = [sys.executable, "-m", "puyu", "chat", str(tmp_path / "missing"), "-p", "hi"]
    quiet = subprocess.run(env_cmd, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and "no such file" in quiet.stderr
    loud = subprocess.run(env_cmd + ["--debug"], capture_output=True, text=True, timeout=120)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ModelLoadError" in loud.stderr


def test_a_commands_positionals_may_follow_its_options(capsys):
    from puyu.cli import build_parser, parse

    args = parse(build_parser(), ["agent", "some-model", "--adapter", "agent", "Solve 2x+3=10", "--tools", "python"])
    assert (args.model, args.adapter, args.task, args.tools) == ("some-model", "agent", "Solve 2x+3=10", "python")
    with pytest.raises(SystemExit):
        parse(build_parser(), ["agent", "some-model", "--adapter", "agent", "task", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err
