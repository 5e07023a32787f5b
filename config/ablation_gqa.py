# Peer: grouped-query attention, plain GPT-2 otherwise. 2 KV heads for 6 query heads (n_head/4 does not divide 6); a third of the baseline's cache.
out_dir = 'out-ablation_gqa'
wandb_run_name = 'ablation_gqa'
n_kv_head = 2
