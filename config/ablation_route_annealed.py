# Annealed: the original recipe's schedule, g from 0.69 (raw 0.8) to 0.27 (raw -1.0) over the middle of the run.
out_dir = 'out-ablation_route_annealed'
wandb_run_name = 'ablation_route_annealed'
use_reciprocity = True
use_discoverability = True
use_route_gate = True
mlp_use_ctx_summary = True
init_route_gate = 0.8
route_anneal_target = -1.0
route_anneal_start = max_iters * 2 // 15  # the original 2000 -> 10000 of 15000 steps (docs/design.md), scaled to this run
route_anneal_end = max_iters * 2 // 3
