# Peer: multi-query attention (one shared K/V head), plain GPT-2 otherwise; 1/n_head of the baseline's cache.
out_dir = 'out-ablation_mqa'
wandb_run_name = 'ablation_mqa'
n_kv_head = 1
