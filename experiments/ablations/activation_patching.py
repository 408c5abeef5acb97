"""Patch an activation of layer L from the visible replay into the isolated one, per
layer; print the fraction of the KL(vis || iso) difference each patch restores."""

from pathlib import Path

from tempo_lens.analysis import ablations as ab

p = ab.script_parser("activation_patching")
p.add_argument("--hooks", nargs="+", default=["resid_pre", "attn_out", "z"])
p.add_argument("--group", default="all", choices=ab.GROUPS)
p.add_argument("--back", action="store_true", help="patch isolated into visible instead")
args = p.parse_args()

model, run = ab.script_run(args)

curves = {
    hook: ab.activation_patching(model, run, hook=hook, group=args.group, source_isolate=args.back)
    for hook in args.hooks
}
print("layer  " + "  ".join(f"{h:>10}" for h in args.hooks))
for L in range(model.cfg.n_layers):
    print(f"{L:5d}  " + "  ".join(f"{curves[h][L]:10.3f}" for h in args.hooks))

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
ab.plot_lines(
    out / "activation_patching.png",
    range(model.cfg.n_layers),
    curves,
    title=f"Patching {'iso → vis' if args.back else 'vis → iso'} ({args.group} positions)",
    xlabel="layer",
    ylabel="fraction restored",
)
print(f"wrote {out / 'activation_patching.png'}")
