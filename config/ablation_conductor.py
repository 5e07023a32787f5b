# Conductor: the full config, but each MLP uses the attention context only while its route gate g < 0.5.
out_dir = 'out-ablation_conductor'
wandb_run_name = 'ablation_conductor'
use_reciprocity = True
use_discoverability = True
use_route_gate = True
mlp_use_ctx_summary = True
mlp_ctx_conductor = True
init_route_gate = 0.0
