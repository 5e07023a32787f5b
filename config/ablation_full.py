# Full lens: lens attention, route gate and low-rank MLP context; the original write-up's complete example (start balanced at g = 0.5, anneal to 0.27).
out_dir = 'out-ablation_full'
wandb_run_name = 'ablation_full'
use_reciprocity = True
use_discoverability = True
use_route_gate = True
mlp_use_ctx_summary = True
init_route_gate = 0.0
