"""Hostile inputs, one class at a time: nothing a user owns is lost, no traceback from the
CLI, no raw exception from the public API, no bad input silently accepted. Each case
asserts the one-line message or the surviving data."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import tempo_lens as tl
from tempo_lens import TempoError
from tempo_lens.analysis.experiments.config import load_config, resolve
from tempo_lens.analysis.experiments.runner import default_out, load_summary, run_experiment
from tempo_lens.cli import main
from tempo_lens.testing import tiny_model
from tempo_lens.viz.report import build_report
from tests.scripts import load_script

USER_BYTES = b"my thesis \x00\xff draft 3\n"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def saved_run(llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "r"
    tl.generate(llama, "The cat sat", threshold=0.1, max_steps=4, eos_token_id=None).save(path)
    return path


def _copy_run(saved_run, tmp_path):
    import shutil

    dst = tmp_path / "r"
    shutil.copytree(saved_run, dst)
    return dst


findings = load_script("experiments/seed_study/findings.py")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, message):
    assert code == 2, err
    assert err.startswith("tempo-lens: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


def _user_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_bytes(USER_BYTES)
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_bytes(USER_BYTES * 2)
    return path


def _intact(path: Path) -> bool:
    return (path / "thesis.tex").read_bytes() == USER_BYTES and (
        path / "sub" / "data.csv"
    ).read_bytes() == USER_BYTES * 2


def _no_temporaries(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _raw(**kw):
    base = dict(
        name="hostile",
        kind="sweep",
        prompts=["hello", "abc d"],
        thresholds=[0.1],
        next_from=["mixture"],
        max_steps=3,
        stop_at_eos=False,
    )
    return base | kw


def _config_file(tmp_path, **kw):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_raw(**kw)))
    return path


# -- class 1: data loss -------------------------------------------------------------------


def test_generate_out_into_a_user_directory_keeps_it(capsys, tmp_path):
    user = _user_dir(tmp_path / "mine")
    code, _, err = _cli(capsys, "generate", "hi", "--model", "tiny-llama", "--out", user)
    _one_line_error(code, err, "is not a tempo_lens run; nothing was written")
    assert _intact(user) and _no_temporaries(tmp_path)


def test_experiment_out_into_a_user_directory_keeps_it(capsys, tmp_path):
    user = _user_dir(tmp_path / "mine")
    cfg = _config_file(tmp_path)
    code, _, err = _cli(capsys, "experiment", cfg, "--model", "tiny-llama", "--out", user)
    _one_line_error(code, err, "is not a tempo_lens experiment")
    assert _intact(user) and not (tmp_path / ".mine.partial").exists()


def test_run_save_onto_a_regular_file_keeps_it(llama, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_bytes(USER_BYTES)
    run = tl.generate(llama, "hi", max_steps=2)
    with pytest.raises(TempoError, match="is a file, not a run directory"):
        run.save(f)
    assert f.read_bytes() == USER_BYTES and _no_temporaries(tmp_path)


def test_run_save_onto_a_project_directory_keeps_it(llama, tmp_path):
    project = _user_dir(tmp_path / "project")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    run = tl.generate(llama, "hi", max_steps=2)
    with pytest.raises(TempoError, match="not a tempo_lens run"):
        tl.save_run(run, project)
    assert _intact(project) and (project / "pyproject.toml").is_file()


def test_experiment_out_holding_a_run_is_refused(llama, saved_run, tmp_path):
    run_dir = _copy_run(saved_run, tmp_path)
    before = (run_dir / "run.json").read_bytes()
    with pytest.raises(TempoError, match="is not a tempo_lens experiment"):
        run_experiment(resolve(_raw()), run_dir, model=llama)
    assert (run_dir / "run.json").read_bytes() == before


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "/tmp/x", "a/b", "runs/../..", 123])
def test_experiment_names_are_slugs_not_paths(tmp_path, name):
    with pytest.raises(TempoError, match="not a valid experiment name"):
        resolve(_raw(name=name))
    with pytest.raises(TempoError, match="not a valid experiment name"):
        default_out({"name": name})


def test_out_dot_is_refused_without_leftovers(capsys, tmp_path, monkeypatch):
    work = _user_dir(tmp_path / "work")
    monkeypatch.chdir(work)
    code, _, err = _cli(capsys, "generate", "hi", "--model", "tiny-llama", "--out", ".")
    _one_line_error(code, err, "is the current directory")
    assert _intact(work) and _no_temporaries(tmp_path)


def test_out_empty_string_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "generate", "hi", "--model", "tiny-llama", "--out", "")
    _one_line_error(code, err, "the output path is empty")
    code, _, err = _cli(capsys, "experiment", _config_file(tmp_path), "--out", "")
    _one_line_error(code, err, "the output path is empty")


def test_out_mount_point_is_refused(capsys):
    code, _, err = _cli(capsys, "generate", "hi", "--model", "tiny-llama", "--out", "/proc")
    _one_line_error(code, err, "is a mount point")


def test_report_out_onto_a_user_file_keeps_it(capsys, saved_run, tmp_path):
    page = tmp_path / "index.html"
    page.write_bytes(USER_BYTES)
    code, _, err = _cli(capsys, "report", saved_run, "--no-attention", "--out", page)
    _one_line_error(code, err, "was not written by tempo_lens")
    assert page.read_bytes() == USER_BYTES


def test_findings_out_onto_a_user_file_keeps_it(llama, tmp_path):
    exp = tmp_path / "sweep"
    run_experiment(resolve(_raw(name="sweep")), exp, model=llama)
    mine = tmp_path / "findings.md"
    mine.write_bytes(USER_BYTES)
    with pytest.raises(TempoError, match="was not written by tempo_lens"):
        findings.write_findings(exp, [], mine)
    assert mine.read_bytes() == USER_BYTES


# -- class 2: damaged runs and summaries ----------------------------------------------------


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: _truncate(d / "run.json", 0.5), "run.json is not valid JSON"),
        (lambda d: (d / "run.json").write_bytes(b"\xff\xfe{"), "run.json is not valid JSON"),
        (lambda d: _truncate(d / "tensors.safetensors", 0.5), "is damaged"),
        (lambda d: _truncate(d / "tensors.safetensors", 0.0), "is damaged"),
        (lambda d: _truncate(d / "tensors.safetensors", 0.001), "is damaged"),
        (lambda d: _edit(d, steps="abc"), "not a valid RunFile: steps"),
        (lambda d: _edit(d, seconds="fast"), "not a valid RunFile: seconds"),
        (lambda d: _edit(d, has_logits="yes"), "not a valid RunFile: has_logits"),
        (lambda d: _edit(d, drop="token_strs"), "not a valid RunFile: token_strs"),
        (lambda d: _edit(d, extra=1), "not a valid RunFile: extra"),
        (lambda d: _edit(d, format_version=7), "has run format 7"),
        (lambda d: _edit(d, captured={"hook_pattern": 3}), "lacks 'act.hook_pattern.0'"),
        (lambda d: _edit_layout(d), "layout.tokens differs from run.json"),
        (lambda d: (d / "tensors.safetensors").unlink(), "is not a saved run"),
    ],
)
def test_damaged_runs_are_one_line_errors(saved_run, tmp_path, damage, message):
    d = _copy_run(saved_run, tmp_path)
    damage(d)
    with pytest.raises(TempoError, match=message):
        tl.load_run(d)


def _edit(d: Path, drop: str | None = None, **changes):
    meta = json.loads((d / "run.json").read_text())
    meta.update(changes)
    meta.pop(drop, None)
    (d / "run.json").write_text(json.dumps(meta))


def _edit_layout(d: Path):
    meta = json.loads((d / "run.json").read_text())
    meta["layout"]["tokens"][0] += 1
    (d / "run.json").write_text(json.dumps(meta))


def test_report_on_a_truncated_run_is_one_line(capsys, saved_run, tmp_path):
    d = _copy_run(saved_run, tmp_path)
    _truncate(d / "tensors.safetensors", 0.5)
    code, _, err = _cli(capsys, "report", d, "--no-attention")
    _one_line_error(code, err, "is damaged")


def test_experiment_report_skips_a_damaged_run_with_a_note(llama, tmp_path):
    exp = tmp_path / "e"
    run_experiment(resolve(_raw()), exp, model=llama)
    bad = sorted((exp / "runs").iterdir())[0]
    _truncate(bad / "tensors.safetensors", 0.3)
    notes = []
    html = build_report(exp, model=llama, attention=False, on_note=notes.append)
    assert any(f"run runs/{bad.name} not loaded" in n and "damaged" in n for n in notes)
    assert "<h2>Runs</h2>" in html  # the other runs are still there


def test_experiment_resume_regenerates_a_damaged_run(llama, tmp_path):
    exp = tmp_path / "e"
    first = run_experiment(resolve(_raw()), exp, model=llama)
    bad = sorted((exp / "runs").iterdir())[1]
    _truncate(bad / "tensors.safetensors", 0.5)
    with pytest.warns(UserWarning, match=f"regenerating run {bad.name}"):
        again = run_experiment(resolve(_raw()), exp, model=llama)
    assert again["timing"]["generated_runs"] == 1
    assert again["timing"]["skipped_runs"] == first["timing"]["generated_runs"] - 1
    assert tl.load_run(bad).steps == tl.load_run(bad).steps  # loads again
    assert {k: v for k, v in again.items() if k != "timing"} == {
        k: v for k, v in first.items() if k != "timing"
    }


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"name": "s", "kind": "sweep", "mo', "summary.json is not valid JSON"),
        (b"", "summary.json is not valid JSON"),
        (b'{"name": 5, "kind": "sweep", "model": "m", "timing": {}}', "SummaryFile: name"),
        (b'{"name": "s", "kind": "sweep", "model": "m"}', "SummaryFile: timing"),
        (b"[1, 2]", "SummaryFile"),
    ],
)
def test_findings_on_a_damaged_summary_is_one_line(capsys, tmp_path, content, message):
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "summary.json").write_bytes(content)
    with pytest.raises(TempoError, match=message):
        load_summary(d)
    code, err = findings.main([str(d), "--out", str(tmp_path / "f.md")]), capsys.readouterr().err
    _one_line_error(code, err.replace("findings.py:", "tempo-lens:", 1), "summary.json")
    assert not (tmp_path / "f.md").exists()


def test_findings_on_a_summary_lacking_figures_is_one_line(capsys, tmp_path):
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "summary.json").write_text('{"name": "s", "kind": "sweep", "model": "m", "timing": {}}')
    code, err = findings.main([str(d), "--out", str(tmp_path / "f.md")]), capsys.readouterr().err
    _one_line_error(code, err.replace("findings.py:", "tempo-lens:", 1), "lack figures")


# -- class 3: config values, all checked before any model loads ------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_prompts": "abc"}, "max_prompts"),
        ({"max_prompts": 0}, "max_prompts"),
        ({"categories": 5}, "categories"),
        ({"model": 42}, "model"),
        ({"seed": "abc"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"bootstrap": -5}, "bootstrap"),
        ({"permutations": 2.5}, "permutations"),
        ({"timing_reps": "abc"}, "timing_reps"),
        ({"timing_reps": -1}, "timing_reps"),
        ({"timing_threshold": "soon"}, "timing_threshold"),
        ({"sample": "random"}, "sample"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"max_steps": True}, "max_steps"),
        ({"max_steps": 10**9}, "max_steps"),
        ({"thresholds": [float("nan")]}, "thresholds"),
        ({"thresholds": ["0.1"]}, "thresholds"),
        ({"thresholds": [0]}, "thresholds"),
        ({"modes": ["isolatd"]}, "modes"),
        ({"next_from": [3]}, "next_from"),
        ({"stop_at_eos": "yes"}, "stop_at_eos"),
        ({"prompts": [""]}, "prompts"),
        ({"prompts": [["nested"]]}, "prompts"),
        ({"description": 5}, "description"),
        ({"thresold": [0.1]}, "did you mean 'thresholds'"),
    ],
)
def test_config_values_are_validated(capsys, tmp_path, change, message):
    with pytest.raises(TempoError, match=message):
        resolve(_raw(**change))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(_raw(**change)))
    out = tmp_path / "out"
    # --model no-such-model: reaching the model load would give another message
    code, _, err = _cli(capsys, "experiment", cfg, "--out", out, "--model", "no-such-model")
    _one_line_error(code, err, f"{cfg}: ")
    assert "unknown model" not in err and not out.exists()


def _suite(tmp_path, text: str) -> Path:
    (tmp_path / "suite.yaml").write_text(text)
    cfg = tmp_path / "exp.yaml"
    raw = _raw(prompt_suite="suite.yaml")
    del raw["prompts"]
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


@pytest.mark.parametrize(
    "suite, message",
    [
        ("a: [unclosed\n", "is not valid YAML"),
        ("a: !!python/object/apply:os.system ['touch /tmp/pwned']\n", "is not valid YAML"),
        ("a: [1, 2]\n", "a prompt suite maps category names"),
        ("a: {b: c}\n", "a prompt suite maps category names"),
        ("- just\n- a list\n", "a prompt suite maps category names"),
    ],
)
def test_prompt_suite_is_validated(tmp_path, suite, message):
    cfg = _suite(tmp_path, suite)
    with pytest.raises(TempoError, match=message):
        load_config(cfg)
    assert not Path("/tmp/pwned").exists()


def test_config_not_utf8_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_bytes(b"name: \xff\xfe\n")
    code, _, err = _cli(capsys, "experiment", cfg)
    _one_line_error(code, err, "is not UTF-8 text")


# -- class 4: CLI arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget-mb", "nan"], "--budget-mb must be a positive number"),
        (["--budget-mb", "inf"], "--budget-mb must be a positive number"),
        (["--budget-mb", "-1"], "--budget-mb must be a positive number"),
        (["--attention-runs", "-1"], "--attention-runs must be >= 0"),
    ],
)
def test_report_arguments_are_validated(capsys, saved_run, argv, message):
    code, _, err = _cli(capsys, "report", saved_run, "--no-attention", *argv)
    _one_line_error(code, err, message)


def test_invalid_utf8_prompt_is_one_line(capsys, tmp_path):
    prompt = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # how argv arrives
    code, _, err = _cli(capsys, "generate", prompt, "--model", "tiny-llama")
    _one_line_error(code, err, "not valid UTF-8")


def test_os_errors_about_a_path_are_one_line(capsys, tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "r"))

    monkeypatch.setattr(tl.TempoRun, "save", denied)
    code, _, err = _cli(capsys, "generate", "hi", "--model", "tiny-llama", "--out", tmp_path / "r")
    _one_line_error(code, err, "Permission denied")


# -- class 5: the public API ----------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([5, -1, 7], "token id -1 is outside"),
        ([5, 10**6], "token id 1000000 is outside"),
        ([1.5, 2.0], "token ids must be integers"),
        ([True, False], "token ids must be integers"),
        ({"a": 1}, "the prompt must be text or a sequence of token ids"),
    ],
)
def test_token_ids_are_range_checked(llama, prompt, message):
    with pytest.raises(TempoError, match=message):
        tl.generate(llama, prompt, max_steps=2)


def test_forward_checks_token_ids(llama):
    layout = tl.Layout.from_prompt([1, 2, llama.cfg.d_vocab])
    with pytest.raises(TempoError, match="outside this model's vocabulary"):
        tl.forward(llama, layout)
    with pytest.raises(TempoError, match="must be >= 0"):
        tl.Layout.from_prompt([1, -3])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_layout_positions_must_be_finite(bad):
    with pytest.raises(TempoError, match="positions must be finite"):
        tl.Layout(torch.tensor([1, 2]), torch.tensor([0.0, bad]), torch.tensor([-1, -1]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": [99]}, "hook point 'blocks.99.attn.hook_attn_scores' does not exist"),
        ({"layers": [0], "heads": [99]}, "heads: index 99 does not exist"),
        ({"layers": [-1]}, "index -1 is negative"),
        ({"layers": [0], "heads": [-1]}, "index -1 is negative"),
        ({"layers": ["0"]}, "indices are integers"),
        ({"layers": 0}, "takes a list of integer indices"),
        ({"heads": {0: [-2]}}, "index -2 is negative"),
        ({"bias": "big"}, "bias must be a number"),
    ],
)
def test_isolation_hooks_arguments(llama, kwargs, message):
    layout = tl.Layout.from_sets([1, 2], [[3, 4]])
    with pytest.raises(TempoError, match=message):
        tl.forward(llama, layout, isolate=False, fwd_hooks=tl.isolation_hooks(layout, **kwargs))


def test_isolation_hooks_with_model_check_ranges_at_once(llama):
    layout = tl.Layout.from_sets([1, 2], [[3, 4]])
    with pytest.raises(TempoError, match="layers: index 99 does not exist; this model has"):
        tl.isolation_hooks(layout, layers=[99], model=llama)
    with pytest.raises(TempoError, match="heads: index 99 does not exist"):
        tl.isolation_hooks(layout, layers=[0], heads=[99], model=llama)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": "0.1"}, "threshold must be a number in \\(0, 1\\] or a callable"),
        ({"threshold": math.nan}, "threshold must lie in"),
        ({"threshold": True}, "threshold must be a number"),
        ({"max_steps": 2.5}, "max_steps must be an integer"),
        ({"max_steps": True}, "max_steps must be an integer"),
        ({"max_parallel": 1.5}, "max_parallel must be an integer"),
        ({"next_from": ["last"]}, "next_from must be one of"),
        ({"cache": "hook_pattern"}, "cache takes a list of hook names"),
        ({"cache": [3]}, "hook names are strings"),
    ],
)
def test_generate_argument_types(llama, kwargs, message):
    with pytest.raises(TempoError, match=message):
        tl.generate(llama, "hi", **kwargs)


@pytest.mark.parametrize("name", [123, 4.5, ["gpt2"], ""])
def test_load_model_name_type(name):
    with pytest.raises(TempoError, match="model name"):
        tl.load_model(name)


def test_nan_probabilities_stop_generation(llama):
    broken = tiny_model("llama")
    with torch.no_grad():
        broken.unembed.W_U[:, 7] = float("nan")
    with pytest.raises(TempoError, match="NaN or infinite probabilities"):
        tl.generate(broken, "hi", max_steps=3)


# -- the weight cache ---------------------------------------------------------------------


def _cache_copy(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the real embedded cache entry, made the cache by CACHE_ENV."""
    import shutil

    from tempo_lens import loading

    tl.load_model()  # make sure the real cache exists
    entry = loading.cache_dir() / loading.CACHE_ENTRY
    copy = tmp_path / "cache"
    shutil.copytree(entry, copy / entry.name)
    monkeypatch.setenv(loading.CACHE_ENV, str(copy))
    return copy / entry.name


def _overwrite_middle(entry: Path) -> str:
    """Garbage in the middle of the tensor data, the safetensors header intact."""
    path = entry / "model.safetensors"
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\x7f" * 4096)
    return "model.safetensors does not match the hash recorded in meta.json"


def _claim_two_layers(entry: Path) -> str:
    meta = json.loads((entry / "meta.json").read_text())
    meta["cfg"]["n_layers"] = 2
    (entry / "meta.json").write_text(json.dumps(meta))
    return "meta.json says n_layers = 2, the weights have 30"


@pytest.mark.embedded
@pytest.mark.parametrize("damage", [_overwrite_middle, _claim_two_layers])
def test_a_damaged_weight_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, damage):
    reference = tl.load_model()
    entry = _cache_copy(tmp_path, monkeypatch)
    reason = damage(entry)
    with pytest.warns(UserWarning, match=re.escape(reason)):
        model = tl.load_model()
    assert model.cfg.n_layers == 30
    tokens = torch.tensor([[1, 504, 2354, 3727, 335, 260]])
    assert torch.equal(model(tokens), reference(tokens))  # the rebuilt weights are the real ones
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        tl.load_model()
    assert not [w for w in seen if "model cache" in str(w.message)]  # the rebuilt entry verifies


_CONCURRENT_LOAD = """
import sys, tempo_lens
model = tempo_lens.load_model()
print("RESULT", model.cfg.n_layers, float(model.W_U.abs().sum()))
"""


@pytest.mark.embedded
def test_two_concurrent_first_loads_share_one_build_and_leave_no_temporary(tmp_path):
    import os
    import subprocess
    import sys

    from tempo_lens import loading

    env = {**os.environ, loading.CACHE_ENV: str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_LOAD],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].split("RESULT")[-1].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and outs[0][0] == "30"  # the same weights in both
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert left == [f".{loading.CACHE_ENTRY}.lock", loading.CACHE_ENTRY]  # no temporary
