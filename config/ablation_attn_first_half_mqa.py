# Placement with multi-query attention: attention in the first half of the layers, one K/V head; 1/(2 n_head) of the baseline's cache.
out_dir = 'out-ablation_attn_first_half_mqa'
wandb_run_name = 'ablation_attn_first_half_mqa'
attn_layers = 'first_half'
n_kv_head = 1
