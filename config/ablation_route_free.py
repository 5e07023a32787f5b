# Free learning from the annealed config's start: g from 0.69, moved by gradients only. Compare with route_annealed.
out_dir = 'out-ablation_route_free'
wandb_run_name = 'ablation_route_free'
use_reciprocity = True
use_discoverability = True
use_route_gate = True
mlp_use_ctx_summary = True
init_route_gate = 0.8
route_anneal_start = 10**9  # never reached: free learning
route_anneal_end = 10**9
