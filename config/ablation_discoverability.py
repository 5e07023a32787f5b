# Discoverability only: does a learned per-key column bias d_j = k_j . u help?
out_dir = 'out-ablation_discoverability'
wandb_run_name = 'ablation_discoverability'
use_discoverability = True
