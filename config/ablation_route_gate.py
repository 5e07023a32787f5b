# Lens attention plus the per-block route gate (init 0.69, annealed toward 0.27), no MLP context.
out_dir = 'out-ablation_route_gate'
wandb_run_name = 'ablation_route_gate'
use_reciprocity = True
use_discoverability = True
use_route_gate = True
