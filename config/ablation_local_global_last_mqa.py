# Local/global (global last) with multi-query attention: one K/V head for all 4 query heads, a quarter of the local/global cache.
out_dir = 'out-ablation_local_global_last_mqa'
wandb_run_name = 'ablation_local_global_last_mqa'
attn_window = 32
attn_global_every = 4  # layers 0-2 local, layer 3 global (config/cpu.py scale)
attn_global_last = True
n_kv_head = 1
