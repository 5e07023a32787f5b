# Placement: attention only in layer 0, every other block MLP-only; 1/n_layer of the baseline's cache.
out_dir = 'out-ablation_attn_first_layer'
wandb_run_name = 'ablation_attn_first_layer'
attn_layers = (0,)
