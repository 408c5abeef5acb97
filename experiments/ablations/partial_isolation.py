"""Partial isolation: a finite bias -b on same-set scores, a window of k nearest
siblings, and isolation that lasts beyond the set ("always": later tokens see only the
top member) — each measured against the isolated and visible replays."""

from pathlib import Path

from tempo_lens.analysis import ablations as ab

p = ab.script_parser("partial_isolation")
p.add_argument("--biases", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8, 16, 1e4])
args = p.parse_args()

model, run = ab.script_run(args)

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
