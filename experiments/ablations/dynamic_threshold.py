"""Dynamic threshold (Bézier and ReLU schedules over t = step / max_steps) and
retroactive pruning: members later tokens barely attend to are marked, never removed."""

from pathlib import Path

import tempo_lens
from tempo_lens.analysis import ablations as ab

p = ab.script_parser(
    "dynamic_threshold", prompt="Once upon a time there lived", steps=20, fast_steps=8
)
p.add_argument("--base", type=float, default=0.05)
p.add_argument("--ratio", type=float, default=0.5, help="keep score > ratio x set mean")
args = p.parse_args()

model = ab.script_model_for(args)
schedules = {
    "bezier": ab.bezier_threshold(p1=0.2, p2=0.8, final=1.0, base=args.base),
    "relu": ab.relu_threshold(activation=0.5, final=1.0, base=args.base),
}
out = Path(args.out)
curves = {}
for name, schedule in schedules.items():
    run = tempo_lens.generate(
        model, args.prompt, threshold=schedule, max_steps=args.steps, eos_token_id=None
    )
    pruning = ab.retroactive_prune(model, run, ratio=args.ratio)
    marked = ab.mark_pruned(run, pruning)  # pruning recorded in run.config, saved with the run
    marked.save(out / name)
    print(f"{name}: {run.config['threshold']}")
    print("  sizes :", [len(s) for s in run.steps])
    print("  pruned:", [(m["step"], m["token"]) for m in pruning.pruned_members(run)])
    print("  text  :", ab.marked_text(run, pruning.pruned))
    curves[f"{name} threshold"] = [schedule(i, args.steps) for i in range(args.steps)]
    curves[f"{name} set size / 10"] = [len(s) / 10 for s in run.steps]

ab.plot_lines(
    out / "schedules.png",
    range(args.steps),
    curves,
    title="Dynamic threshold schedules",
    xlabel="step",
    ylabel="value",
)
print(f"wrote {out / 'schedules.png'}")
