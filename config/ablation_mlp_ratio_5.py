# MLP expansion 5 instead of 4 in the full config: more MLP capacity to take work from attention.
out_dir = 'out-ablation_mlp_ratio_5'
wandb_run_name = 'ablation_mlp_ratio_5'
use_reciprocity = True
use_discoverability = True
use_route_gate = True
mlp_use_ctx_summary = True
init_route_gate = 0.0
mlp_expansion_ratio = 5.0
