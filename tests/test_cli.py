"""CLI: every user mistake is one line on stderr, exit code 2, no traceback, no output dir."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tempo_lens as tl
from tempo_lens.cli import main


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "   "], "the prompt is empty; pass some text"),
        (["generate", "hi", "--threshold", "0"], "threshold must lie in (0, 1], got 0.0"),
        (["generate", "hi", "--threshold", "1.5"], "threshold must lie in (0, 1], got 1.5"),
        (["generate", "hi", "--max-steps", "0"], "max_steps must be an integer >= 1, got 0"),
        (["generate", "hi", "--next-from", "middle"], "next_from must be one of mixture, last"),
        (["generate", "hi", "--max-parallel", "0"], "max_parallel must be an integer >= 1"),
        (
            ["generate", "x" * 300, "--model", "tiny-llama"],
            "the prompt has 300 tokens but the model's context is 256; shorten the prompt",
        ),
        (
            ["generate", "hi", "--model", "tiny-llama", "--cache", "hook_patern"],
            "cache name 'hook_patern' matches no hook of this model; did you mean 'hook_pattern'?",
        ),
        (["generate", "hi", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["info", "tiny-bert"], "unknown tiny model 'tiny-bert'"),
    ],
)
def test_user_errors_are_one_line(capsys, tmp_path, argv, message):
    out_dir = tmp_path / "run"
    code, out, err = _cli(
        capsys, *argv, *(["--out", str(out_dir)] if argv[0] == "generate" else [])
    )
    assert code == 2
    assert err.startswith("tempo-lens: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out_dir.exists()


def test_unwritable_out(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _cli(
        capsys, "generate", "hi", "--model", "tiny-llama", "--out", str(blocker / "run")
    )
    assert code == 2 and "is a file, not a directory; choose another path" in err
    code, _, err = _cli(capsys, "generate", "hi", "--model", "tiny-llama", "--out", str(blocker))
    assert code == 2 and "is a file, not a run directory; give a new path" in err


def test_generate_prints_text_and_stats_and_saves(capsys, tmp_path):
    code, out, _ = _cli(
        capsys,
        "generate",
        "The cat",
        "--model",
        "tiny-llama",
        "--max-steps",
        "5",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1].startswith("steps 5 | physical tokens ")
    assert "isolated" in lines[-1] and "saved to" in lines[-1]
    run = tl.load_run(tmp_path / "r")
    assert len(run.steps) == 5 and lines[0].startswith("The cat")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["run.json", "tensors.safetensors"]


def test_generate_json(capsys):
    code, out, _ = _cli(
        capsys,
        "generate",
        "The cat",
        "--model",
        "tiny-gpt2",
        "--max-steps",
        "3",
        "--visible",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["config"]["isolate"] is False and data["format_version"] == 1


def test_info_tiny(capsys):
    code, out, _ = _cli(capsys, "info", "tiny-neox", "--json")
    info = json.loads(out)
    assert code == 0 and info["positional_embedding_type"] == "rotary" and info["rotary_dim"] == 8


def test_version_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "tempo_lens.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"tempo-lens {tl.__version__}"


def test_help_imports_neither_torch_nor_transformer_lens():
    import subprocess
    import sys

    code = (
        "import contextlib, io, sys\n"
        "from tempo_lens.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "import tempo_lens\n"
        "heavy = [m for m in ('torch', 'transformer_lens', 'transformers') if m in sys.modules]\n"
        "names = ('info', 'generate', 'experiment', 'report')\n"
        "print(heavy, all(c in out.getvalue() for c in names))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="."
    )
    assert result.stdout.strip() == "[] True"


def test_every_command_is_listed_and_the_moved_ones_are_gone(capsys):
    from tempo_lens.cli import COMMANDS, build_parser

    names = [c.NAME for c in COMMANDS]
    assert names == ["info", "generate", "experiment", "report"]
    assert build_parser().parse_args(["report", "d"]).func is COMMANDS[3].run
    for moved in ("bench", "findings"):  # now benchmarks/bench.py, experiments/seed_study/
        with pytest.raises(SystemExit) as exit_info:
            main([moved])
        assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_lazy_package_attributes():
    import tempo_lens

    assert tempo_lens.load_model.__module__ == "tempo_lens.loading.load"
    assert set(tempo_lens.__all__) <= set(dir(tempo_lens))
    with pytest.raises(AttributeError):
        tempo_lens.no_such_name  # noqa: B018


def test_public_names_survive_importing_their_submodules():
    """`tempo_lens.generate` is the function even after `tempo_lens.generate` (the module)
    was imported, in a fresh interpreter where nothing touched the name before."""
    code = (
        "import tempo_lens.cli, tempo_lens.generate, tempo_lens.hooks, tempo_lens.run\n"
        "import tempo_lens as tl\n"
        "assert callable(tl.generate) and tl.generate.__name__ == 'generate'\n"
        "assert callable(tl.forward) and callable(tl.isolation_hooks)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "ok"
