# The seeds' route gate made able to close: lens attention and the annealed route gate, plus a hard-concrete gate on each layer's attention held to half the layers.
out_dir = 'out-ablation_route_budget_half'
wandb_run_name = 'ablation_route_budget_half'
use_reciprocity = True
use_discoverability = True
use_route_gate = True
attn_budget = 0.5
