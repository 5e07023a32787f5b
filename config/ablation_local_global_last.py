# Local/global with the global layer last: one layer in 4 keeps global attention, the last of each 4; the others attend to their last 32 tokens.
out_dir = 'out-ablation_local_global_last'
wandb_run_name = 'ablation_local_global_last'
attn_window = 32
attn_global_every = 4  # at config/cpu.py scale (4 layers): layers 0-2 local, layer 3 global
attn_global_last = True
