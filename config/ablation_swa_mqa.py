# Local attention in every layer (window 32) with multi-query attention: one K/V head for all query heads.
out_dir = 'out-ablation_swa_mqa'
wandb_run_name = 'ablation_swa_mqa'
attn_window = 32
n_kv_head = 1
