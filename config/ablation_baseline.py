# Baseline: exactly GPT-2 (no lens mechanism), the reference every other ablation is measured against.
out_dir = 'out-ablation_baseline'
wandb_run_name = 'ablation_baseline'
