"""Views, set graph, report and `tempo-lens report` on tiny models (seconds)."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from tempo_lens import generate
from tempo_lens.cli import main
from tempo_lens.testing import tiny_hf_model, tiny_model
from tempo_lens.viz import attention_view, build_report, set_graph, token_labels, tokens_view
from tempo_lens.viz.attention import assemble_pattern, replay_patterns
from tempo_lens.viz.report import circuitsvis_bundle, encoded_head_bytes, plan_attention, spread

from .reference import tempo_inputs

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def run(llama):
    r = generate(llama, "hello wor", threshold=0.1, max_steps=6, eos_token_id=None)
    assert any(len(s) > 1 for s in r.steps), "fixture needs a multi-member set"
    return r


@pytest.fixture(scope="module")
def run_dir(run, tmp_path_factory):
    return run.save(tmp_path_factory.mktemp("runs") / "tiny")


def report_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="tl-data">(.*?)</script>', html, re.S)
    assert m, "report carries no view data"
    return json.loads(m.group(1).replace("<\\/", "</"))


def decode(layer: dict) -> np.ndarray:
    """The report's encoding read back: [heads, n, n], lower triangle."""
    n, h = layer["n"], len(layer["heads"])
    vals = np.frombuffer(base64.b64decode(layer["data"]), dtype="<u2").reshape(h, -1) / 65535
    out = np.zeros((h, n, n))
    rows, cols = np.tril_indices(n)
    out[:, rows, cols] = vals
    return out


# -- labels ----------------------------------------------------------------------------------


def test_labels_group_siblings_and_number_once(run):
    labels = token_labels(run)
    assert len(labels) == len(run.layout)
    n = run.layout.n_prompt
    assert labels[:n] == [lab for lab in labels[:n] if "@" not in lab and "·" not in lab]
    for i, ps in enumerate(run.steps):
        sib = labels[run.layout.set_slice(i)]
        assert sib[0].endswith(f" @{ps.position}")
        assert all("@" not in lab for lab in sib[1:])  # the position once per set
        if len(sib) > 1:
            assert sib[0][0] == "┌" and sib[-1][0] == "└"
            assert all(lab[0] == "├" for lab in sib[1:-1])
        assert len(set(sib)) == len(sib)


def test_labels_format_and_collisions(run):
    i = next(i for i, s in enumerate(run.steps) if len(s) == 2)
    sl = run.layout.set_slice(i)
    strs = list(run.token_strs)
    strs[sl.start], strs[sl.start + 1] = " The", " She"
    pos = run.steps[i].position
    labels = token_labels(dataclasses.replace(run, token_strs=strs))
    assert labels[sl.start : sl.start + 2] == [f"┌The @{pos}", "└She"]
    # two members that decode alike still get distinct labels (their ids are appended)
    strs[sl.start + 1] = " The"
    labels = token_labels(dataclasses.replace(run, token_strs=strs))
    ids = run.layout.tokens.tolist()
    assert labels[sl.start : sl.start + 2] == [
        f"┌The @{pos}#{ids[sl.start]}",
        f"└The#{ids[sl.start + 1]}",
    ]
    assert token_labels(dataclasses.replace(run, token_strs=["\n"] + strs[1:]))[0] == "⏎"


def test_fallback_steps_are_flagged(run):
    from tempo_lens.viz.attention import fallback_steps

    steps = list(run.steps)
    steps[0] = dataclasses.replace(steps[0], tokens=steps[0].tokens[:1], probs=[0.05])
    flagged = dataclasses.replace(run, steps=steps)
    assert 0 in fallback_steps(flagged) and fallback_steps(run) == []
    from tempo_lens.viz.report import step_table

    assert step_table(flagged).count('class="fallback"') == len(fallback_steps(flagged))
    label = token_labels(flagged)[flagged.layout.set_slice(0).start]
    assert label.endswith(f"@{steps[0].position} †")
    assert all("†" not in lab for lab in token_labels(run))


# -- attention -------------------------------------------------------------------------------


def test_replayed_pattern_matches_hugging_face(run, llama):
    """The report's attention (replayed on TL) equals HF's eager attention given explicit
    positions and the isolation mask built independently (tests/reference.py)."""
    hf, _ = tiny_hf_model("llama")
    prompt = run.layout.tokens[: run.layout.n_prompt].tolist()
    ids, pos, mask = tempo_inputs(prompt, [s.tokens for s in run.steps], isolate=True)
    with torch.no_grad():
        ref = hf(input_ids=ids, position_ids=pos, attention_mask=mask, output_attentions=True)
    ours = replay_patterns(run, llama, [0, 1])
    for layer in (0, 1):
        torch.testing.assert_close(ours[layer], ref.attentions[layer][0], atol=2e-5, rtol=0)
    # siblings are invisible to each other in an isolated run
    hidden = ~run.layout.attention_mask(True)
    assert ours[1][:, hidden].abs().max() == 0


def test_captured_pattern_assembles_to_replay(llama):
    r = generate(
        llama, "abc", threshold=0.1, max_steps=4, eos_token_id=None, cache=["hook_pattern"]
    )
    replay = replay_patterns(r, llama, [0, 1])
    for layer in (0, 1):
        full = assemble_pattern(r, layer)
        assert full.shape == (4, len(r.layout), len(r.layout))
        torch.testing.assert_close(full, replay[layer], atol=1e-5, rtol=0)


def test_attention_view_props(run, llama):
    from tempo_lens.viz.attention import MASKED, masked_cells

    view = attention_view(run, layer=1, heads=[0, 2], model=llama)
    assert view.component == "AttentionHeads"
    assert view.props["tokens"] == token_labels(run)
    assert view.props["attentionHeadNames"] == ["L1H0", "L1H2"]
    # masked sibling cells are drawn apart from zero attention
    masked = masked_cells(run)
    assert masked.any() and masked.sum() == sum(len(s) * (len(s) - 1) // 2 for s in run.steps)
    att = view.props["attention"]
    assert (att[:, masked] == MASKED).all() and (att[:, ~masked] >= 0).all()
    assert view.props["minValue"] == MASKED and view.props["negativeColor"]
    end = run.layout.set_slice(1).stop
    step_view = attention_view(run, step=1, layer=0, model=llama)
    assert step_view.props["tokens"] == token_labels(run)[:end]
    tv = tokens_view(run)
    assert tv.component == "ColoredTokens"
    assert tv.props["values"][run.layout.n_prompt] == run.steps[0].probs[0]


def test_notebook_views_carry_the_bundle_once(run, llama):
    from tempo_lens.viz import notebook

    notebook.reset_bundle()
    first = attention_view(run, layer=0, model=llama)._repr_html_()
    later = [tokens_view(run)._repr_html_(), attention_view(run, layer=1, model=llama)]
    later[1] = later[1]._repr_html_()
    bundle = circuitsvis_bundle()
    assert bundle in first and len(first) > len(bundle)
    assert all(bundle not in h and len(h) < 50_000 for h in later)
    assert "CircuitsVis.AttentionHeads" in later[1] and "CircuitsVis.ColoredTokens" in later[0]


def test_attention_without_pattern_or_model_says_how(run):
    from tempo_lens import TempoError

    with pytest.raises(TempoError, match="pass a model"):
        attention_view(run, layer=0)


# -- set graph --------------------------------------------------------------------------------


def test_set_graph_structure(run):
    graph = set_graph(run)
    root = ET.fromstring(graph.svg)
    steps = root.findall(f".//{SVG}g[@class='step']")
    assert [int(g.get("data-step")) for g in steps] == list(range(len(run.steps)))
    xs = []
    for g, ps in zip(steps, run.steps, strict=True):
        members = g.findall(f"{SVG}g[@class='member']")
        assert [int(m.get("data-token-id")) for m in members] == ps.tokens
        assert [float(m.get("data-prob")) for m in members] == pytest.approx(ps.probs, abs=1e-6)
        rect_x = {float(m.find(f"{SVG}rect").get("x")) for m in members}
        assert len(rect_x) == 1  # one column per step
        ys = [float(m.find(f"{SVG}rect").get("y")) for m in members]
        assert ys == sorted(ys)  # stacked in rank order
        xs.append(rect_x.pop())
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # steps left to right
    links = root.findall(f".//{SVG}path[@class='link']")
    # mixture: every member feeds the next step
    sizes = [len(s) for s in run.steps]
    assert len(links) == sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))
    assert graph._repr_svg_() == graph.svg and graph.svg in graph._repr_html_()


def test_set_graph_links_follow_next_from(run):
    last = dataclasses.replace(run, config=dataclasses.replace(run.config, next_from="last"))
    links = ET.fromstring(set_graph(last).svg).findall(f".//{SVG}path[@class='link']")
    sizes = [len(s) for s in run.steps]
    assert len(links) == sum(sizes[1:])
    assert all(
        lk.get("data-from").split(":")[1] == str(sizes[int(lk.get("data-from")[0])] - 1)
        for lk in links
    )


# -- size budget ------------------------------------------------------------------------------


def test_plan_attention_budget():
    per_layer = 9 * encoded_head_bytes(30)
    plan = plan_attention(30, 9, range(30), 12_000_000)
    assert plan.layers == list(range(30)) and plan.heads == list(range(9))  # no cap: all
    plan = plan_attention(30, 9, range(30), 12_000_000, max_layers=8)
    assert plan.layers == [0, 4, 8, 12, 17, 21, 25, 29] and plan.heads == list(range(9))
    plan = plan_attention(30, 9, range(30), 3 * per_layer + 10)
    assert plan.layers == [0, 14, 29] and "fit the size budget" in plan.note
    plan = plan_attention(30, 9, range(30), 2 * encoded_head_bytes(30))
    assert plan.layers == [0] and plan.heads == [0, 1]
    assert plan_attention(30, 9, range(30), 10).layers == []
    assert plan_attention(30, 9, [3, 5], 12_000_000, max_layers=None).layers == [3, 5]
    assert spread(range(30), 2) == [0, 29]
    assert encoded_head_bytes(30) == 4 * -(-465 * 2 // 3)


def test_report_keeps_under_budget(llama, tmp_path):
    long_run = generate(llama, "a" * 60, threshold=0.1, max_steps=80, eos_token_id=None)
    long_run.save(tmp_path / "long")
    n = len(long_run.layout)
    fixed = len(build_report(tmp_path / "long", attention=False).encode())
    budget = (fixed + 1.5 * 4 * encoded_head_bytes(n)) / 1e6  # room for one layer
    html = build_report(tmp_path / "long", model=llama, budget_mb=budget)
    layers = report_data(html)["views"]["v1"]["layers"]
    assert sorted(layers) == ["0"] and len(layers["0"]["heads"]) == 4
    assert len(html.encode()) <= budget * 1e6 + 20_000  # + labels, picker, notes
    assert "fit the size budget" in html


# -- report -----------------------------------------------------------------------------------


def test_bracket_html_strikes_pruned_members_and_escapes_tokens(run):
    from tempo_lens import PrunedMember
    from tempo_lens.viz.brackets import bracket_html

    i = next(i for i, s in enumerate(run.steps) if len(s) == 2)
    sl = run.layout.set_slice(i)
    strs = list(run.token_strs)
    strs[sl.start], strs[sl.start + 1] = " <b>", " &x"
    cut = PrunedMember(step=i + 1, set_step=i, member=1, token=run.steps[i].tokens[1], score=0.0123)
    pruned = dataclasses.replace(run, token_strs=strs, pruned=[cut])
    html = bracket_html(pruned)
    p0, p1 = run.steps[i].probs
    assert (
        f' <span class="set">[<span title="p={p0:.3f}">&lt;b&gt;</span>/<s class="pruned" '
        f'title="p={p1:.3f}; pruned after step {i + 1} (attention 0.0123)">&amp;x</s>]</span>'
    ) in html
    assert html.count("<s ") == 1 and "<b>" not in html
    assert html.startswith('<pre class="bracket"><span class="prompt">hello wor</span>')
    assert bracket_html(run).count('class="set"') == sum(len(s) > 1 for s in run.steps)


def test_run_report_is_self_contained(run, run_dir, llama):
    html = build_report(run_dir, model=llama)
    assert html.count("var CircuitsVis=") == 1  # the bundle, inlined once
    assert "unpkg.com" not in html and "sourceMappingURL" not in html
    # the first </script> closes the whole bundle: nothing inside it ends the element early
    assert html.split("<script>", 1)[1].split("</script>", 1)[0] == circuitsvis_bundle()
    # the report's own CSS and script (package data) are inlined, not linked
    from tempo_lens.viz.templating import static_text

    assert f"<style>{static_text('report.css')}</style>" in html
    assert f"<script>{static_text('report.js')}</script></body></html>" in html
    assert "<link" not in html and 'src="http' not in html
    data = report_data(html)["views"]
    tokens, att = data["v0"], data["v1"]
    assert tokens["kind"] == "tokens" and tokens["tokens"] == token_labels(run)
    assert att["kind"] == "attention" and sorted(att["layers"]) == ["0", "1"]
    full = replay_patterns(run, llama, [1])[1].numpy()
    np.testing.assert_allclose(decode(att["layers"]["1"]), full, atol=1e-5)
    assert html.count('class="member"') == sum(len(s) for s in run.steps)
    assert '<table class="steps">' in html and html.count("<tr><td>") >= len(run.steps)


def test_experiment_report(run, llama, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = tmp_path / "exp"
    root.mkdir()
    run.save(root / "runs" / "iso")
    visible = dataclasses.replace(run.config, isolate=False)
    dataclasses.replace(run, config=visible).save(root / "runs" / "vis")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(root / "kl.png")
    fig.savefig(root / "js.png")
    plt.close(fig)
    (root / "summary.json").write_text(
        json.dumps({"kl_mean": 0.125, "per_prompt": [{"prompt": "a", "kl": 0.5}]})
    )
    (root / "config.yaml").write_text("kind: compare\nthreshold: 0.1\n")
    (root / "report.md").write_text(
        "# Findings\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![kl](kl.png)\n"
    )
    html = build_report(root, model=llama)
    # kl.png where report.md shows it, js.png under Plots: each once
    assert html.count("data:image/png;base64,") == 2
    assert html.count('alt="js.png"') == 1 and html.count('alt="kl"') == 1
    assert "<th>kl_mean</th><td>0.125</td>" in html
    assert "<th>prompt</th><th>kl</th>" in html and "<td>0.5</td>" in html
    assert "threshold: 0.1" in html and "<h1>Findings</h1>" in html and "<td>2</td>" in html
    views = report_data(html)["views"]
    assert [v["kind"] for v in views.values()].count("attention") == 1  # first run only
    assert "runs/iso" in html and "runs/vis" in html
    (root / "summary.json").write_text("{broken")
    assert "summary.json is not valid JSON" in build_report(root, model=llama)


# -- CLI --------------------------------------------------------------------------------------


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tempo-lens: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_errors(capsys, tmp_path, run_dir):
    assert "does not exist" in one_line_error(capsys, ["report", "/nonexistent"])
    (tmp_path / "empty").mkdir()
    assert "nothing to report" in one_line_error(capsys, ["report", str(tmp_path / "empty")])
    assert "directory" in one_line_error(capsys, ["report", str(run_dir), "--out", str(tmp_path)])
    assert "--layers" in one_line_error(capsys, ["report", str(run_dir), "--layers", "x"])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.json").write_text("{}")
    assert "not a saved run" in one_line_error(capsys, ["report", str(tmp_path / "half")])


def test_cli_report_writes_one_file(capsys, tmp_path, run, run_dir):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(out), "--layers", "1"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    views = report_data(out.read_text())["views"]
    assert sorted(views["v1"]["layers"]) == ["1"]  # replayed on tiny-llama, the run's model
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary left behind
    assert "layer 7 does not exist" in one_line_error(
        capsys, ["report", str(run_dir), "--out", str(out), "--layers", "7"]
    )


def test_cli_report_without_loadable_model(capsys, tmp_path, run):
    """A model that cannot be loaded here costs the attention section, not the report;
    --no-attention skips the model entirely."""
    dataclasses.replace(run, model_name="no-such-model").save(tmp_path / "run")
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert "attention not shown: unknown model" in capsys.readouterr().err
    assert "Attention not shown" in out.read_text() and 'class="member"' in out.read_text()
    assert main(["report", str(tmp_path / "run"), "--out", str(out), "--no-attention"]) == 0
    assert '"kind":"attention"' not in out.read_text()


def test_report_shows_provenance_and_says_replay_is_not_faithful(llama, tmp_path):
    hooked = generate(
        llama,
        "hello wor",
        threshold=0.1,
        max_steps=4,
        eos_token_id=None,
        fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: z * 0.5)],
        label="halve L0",
    )
    hooked.save(tmp_path / "hooked")
    notes = []
    html = build_report(tmp_path / "hooked", model=llama, on_note=notes.append)
    assert html.index('class="warning"') < html.index("<h2>Text</h2>")
    assert "blocks.0.attn.hook_z" in html and "halve L0" in html
    assert "<h2>Provenance</h2>" in html and hooked.provenance.weight_hash in html
    assert any("cannot replay faithfully" in n for n in notes)
    clean = generate(llama, "hello wor", threshold=0.1, max_steps=4, eos_token_id=None)
    clean.save(tmp_path / "clean")
    html = build_report(tmp_path / "clean", model=llama)
    assert 'class="warning"' not in html and "none (replayable)" in html


def test_experiment_summary_and_markdown_tables_stay_readable(tmp_path):
    from tempo_lens.analysis.experiments.markdown import table as markdown_table

    root = tmp_path / "exp"
    root.mkdir()
    summary = {
        "n": 3,
        "per_layer": {"0": {"kl": 0.1, "corr": 0.9}, "1": {"kl": 0.2, "corr": 0.8}},
        "deep": {"a": {"b": {"c": [1, 2, 3]}}, "long": list(range(100))},
    }
    (root / "summary.json").write_text(json.dumps(summary))
    header = ["layer", "forced max|diff|", "corr"]
    (root / "report.md").write_text(markdown_table(header, [[0, 0.5, 0.9]]) + "\n")
    html = build_report(root, attention=False)
    # the pipes inside a header cell do not split it: 3 columns, as written
    md = html[html.index('<section class="md">') : html.index("</section>")]
    assert md.count("<th>") == 3 and "<th>forced max|diff|</th>" in md
    summ = html[html.index("<h2>Summary</h2>") :]
    summ = summ[: summ.index("</section>")]
    assert "<th>n</th><td>3</td>" in summ
    assert "<th></th><th>kl</th><th>corr</th>" in summ  # per_layer as one table
    assert '<details class="json"><summary>deep' in summ  # deeper: collapsed JSON
    assert "<td><table" not in summ  # never tables inside tables
