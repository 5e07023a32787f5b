# Placement: attention only in the first half of the layers, plain GPT-2 otherwise (the others are MLP-only blocks); half the baseline's cache.
out_dir = 'out-ablation_attn_first_half'
wandb_run_name = 'ablation_attn_first_half'
attn_layers = 'first_half'  # resolved against n_layer when the model is built: (0, 1) of 4, (0, 1, 2) of 6
