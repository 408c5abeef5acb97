"""Patch an activation of layer L from the visible replay into the isolated one, per
layer; print the fraction of the KL(vis || iso) difference each patch restores."""

import argparse
from pathlib import Path

import tempo_lens
from tempo_lens.analysis import ablations as ab

p = argparse.ArgumentParser()
p.add_argument("--prompt", default="The cat sat on the")
p.add_argument("--model", default=None, help="model name, or 'tiny'")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--hooks", nargs="+", default=["resid_pre", "attn_out", "z"])
p.add_argument("--group", default="all", choices=ab.GROUPS)
p.add_argument("--back", action="store_true", help="patch isolated into visible instead")
p.add_argument("--out", default="runs/ablations/activation_patching_script")
p.add_argument("--fast", action="store_true", help="tiny model, 6 steps (tests)")
args = p.parse_args()
if args.fast:
    args.model, args.steps = "tiny", 6

model = ab.script_model(args.model)
run = tempo_lens.generate(
    model, args.prompt, threshold=0.1, max_steps=args.steps, eos_token_id=None
)
print(run.text())

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
