# MLP expansion 2.5 instead of 4 in the full config: does the context path let a smaller MLP keep up?
out_dir = 'out-ablation_mlp_ratio_2p5'
wandb_run_name = 'ablation_mlp_ratio_2p5'
use_reciprocity = True
use_discoverability = True
use_route_gate = True
mlp_use_ctx_summary = True
init_route_gate = 0.0
mlp_expansion_ratio = 2.5
