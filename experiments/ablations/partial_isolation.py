"""Partial isolation: a finite bias -b on same-set scores, a window of k nearest
siblings, and isolation that lasts beyond the set ("always": later tokens see only the
top member) — each measured against the isolated and visible replays."""

import argparse
from pathlib import Path

import tempo_lens
from tempo_lens.analysis import ablations as ab

p = argparse.ArgumentParser()
p.add_argument("--prompt", default="The cat sat on the")
p.add_argument("--model", default=None, help="model name, or 'tiny'")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--biases", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8, 16, 1e4])
p.add_argument("--out", default="runs/ablations/partial_isolation_script")
p.add_argument("--fast", action="store_true", help="tiny model, 6 steps (tests)")
args = p.parse_args()
if args.fast:
    args.model, args.steps = "tiny", 6

model = ab.script_model(args.model)
run = tempo_lens.generate(
    model, args.prompt, threshold=0.1, max_steps=args.steps, eos_token_id=None
)
print(run.text())

sweep = ab.bias_sweep(model, run, args.biases)
print("       b   KL(iso||b)  KL(vis||b)")
for b, d in zip(args.biases, sweep, strict=True):
    print(f"{b:8g}  {d.kl_iso_members:10.4f}  {d.kl_vis_members:10.4f}")

largest = max(len(s) for s in run.steps)
variants = {f"window {k}": ab.sibling_window_hooks(run.layout, k) for k in range(largest)}
variants["isolate always"] = ab.isolate_always_hooks(run.layout)
print("variant          KL(iso||v)  KL(vis||v)")
for name, d in ab.compare_hooks(model, run, variants).items():
    print(f"{name:15s}  {d.kl_iso_members:10.4f}  {d.kl_vis_members:10.4f}")

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
curves = {
    "KL(iso || bias b)": [d.kl_iso_members for d in sweep],
    "KL(vis || bias b)": [d.kl_vis_members for d in sweep],
}
ab.plot_lines(
    out / "bias_sweep.png",
    args.biases,
    curves,
    title="Partial isolation",
    xlabel="b",
    ylabel="mean KL (nats)",
    logx=True,
)
print(f"wrote {out / 'bias_sweep.png'}")
