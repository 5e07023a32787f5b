# Local/global (Gemma's, Character.AI's pattern): one layer in 4 keeps global attention, the first of each 4; the others attend to their last 32 tokens.
out_dir = 'out-ablation_local_global'
wandb_run_name = 'ablation_local_global'
attn_window = 32
attn_global_every = 4  # at config/cpu.py scale (4 layers): layer 0 global, layers 1-3 local
