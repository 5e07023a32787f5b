# Placement with multi-query attention: attention only in layer 0, one K/V head; 1/(n_layer n_head) of the baseline's cache.
out_dir = 'out-ablation_attn_first_layer_mqa'
wandb_run_name = 'ablation_attn_first_layer_mqa'
attn_layers = (0,)
n_kv_head = 1
