# Placement at the baseline's parameter count: attention in the first half of the layers, the attention-free layers' MLPs widened by the attention's parameters.
out_dir = 'out-ablation_attn_first_half_iso'
wandb_run_name = 'ablation_attn_first_half_iso'
attn_layers = 'first_half'
attn_free_mlp_iso = True
