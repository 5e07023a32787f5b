# Local/global (global last) with cross-layer attention across the local layers (Character.AI ties K/V across layers): at config/cpu.py scale layers 0-2 are local and share one K/V (computed in layer 0), layer 3 is global with its own.
out_dir = 'out-ablation_local_global_last_cla'
wandb_run_name = 'ablation_local_global_last_cla'
attn_window = 32
attn_global_every = 4
attn_global_last = True
kv_share = 3  # groups (0, 1, 2) and (3) of 4 layers: a CLA group shares one window, so the global layer is its own group
