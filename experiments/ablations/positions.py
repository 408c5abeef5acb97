"""Position-sharing ablations: members at p, p+δ, ... instead of all at p; fully
sequential positions; a gap between prompt and generation. Same tokens, same explicit
mask: only positions change. KL is measured against the shared-position replay."""

from pathlib import Path

from tempo_lens.analysis import ablations as ab

p = ab.script_parser("positions")
p.add_argument("--deltas", type=float, nargs="+", default=[0.25, 0.5, 1, 2])
p.add_argument("--gaps", type=float, nargs="+", default=[1, 5, 20, 100, 1000])
args = p.parse_args()

model, run = ab.script_run(args)

rotary = model.cfg.positional_embedding_type == "rotary"
variants = ab.standard_variants(run.layout, args.deltas, args.gaps, rotary)
table = ab.position_ablation(model, run, variants, isolate=True)
print("variant       KL members  KL next  top-1 same")
for name, row in table.items():
    print(
        f"{name:12s}  {row['kl_members']:10.4f}  {row['kl_next']:7.4f}  {row['top1_agree']:10.2f}"
    )

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
gaps = list(args.gaps)
ab.plot_lines(
    out / "position_gaps.png",
    gaps,
    {"KL members": [table[f"gap {g:g}"]["kl_members"] for g in gaps]},
    title="Gap between prompt and generation (explicit mask kept)",
    xlabel="gap",
    ylabel="mean KL to gap 0 (nats)",
    logx=True,
)
print(f"wrote {out / 'position_gaps.png'}")
